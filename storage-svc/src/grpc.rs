//! `petset.v1.Storage` over the domain modules: requests are checked and
//! translated, answers built from the stored records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use petset_core::error::{Error, Result, Violations};
use petset_core::identity::IdentityRef;
use petset_core::quantity::format_bytes;
use petset_core::selector::{NodeSelector, Operator};
use petset_core::store::Versioned;
use petset_core::store::page::PageRequest;
use petset_core::validate;
use petset_proto::v1::{self, storage_server};
use tonic::{Request, Response, Status};

use crate::attach::{self, Attacher};
use crate::claims::{self, Binding, Claims};
use crate::classes::{self, Classes};
use crate::provisioner::Roots;
use crate::records::{
    AttachmentRecord, ClaimPhase, ClaimRecord, ClassRecord, VolumeRecord, VolumeSource,
};
use crate::volumes::{self, Volumes};

/// The Storage service.
#[derive(Debug, Clone)]
pub struct StorageApi {
    /// Storage classes.
    pub classes: Classes,
    /// Volumes.
    pub volumes: Volumes,
    /// Claims and binding.
    pub claims: Claims,
    /// Attachments.
    pub attacher: Attacher,
    /// Where volumes may live.
    pub roots: Arc<Roots>,
}

fn storage_map(bytes: u64) -> HashMap<String, String> {
    HashMap::from([("storage".to_string(), format_bytes(bytes))])
}

fn name_check(field: &str, name: &str) -> Result<()> {
    let mut v = Violations::new();
    v.check(field, validate::dns1123_subdomain(name));
    v.into_result()
}

fn namespaced(namespace: &str, name: &str) -> Result<String> {
    validate::namespaced_name(namespace, name, validate::dns1123_subdomain)
}

fn class_to_api(c: &Versioned<ClassRecord>) -> v1::StorageClass {
    let r = &c.value;
    v1::StorageClass {
        metadata: Some(r.meta.to_api(c.mod_revision)),
        provisioner: r.provisioner.as_str().into(),
        parameters: r.parameters.clone().into_iter().collect(),
        reclaim_policy: format!("{:?}", r.reclaim_policy),
        volume_binding_mode: format!("{:?}", r.binding_mode),
        allow_volume_expansion: r.allow_volume_expansion,
    }
}

fn selector_to_api(s: &NodeSelector) -> v1::NodeSelector {
    v1::NodeSelector {
        node_selector_terms: s
            .terms
            .iter()
            .map(|term| v1::NodeSelectorTerm {
                match_expressions: term
                    .iter()
                    .map(|r| v1::NodeSelectorRequirement {
                        key: r.key.clone(),
                        operator: match r.operator {
                            Operator::In => "In",
                            Operator::NotIn => "NotIn",
                            Operator::Exists => "Exists",
                            Operator::DoesNotExist => "DoesNotExist",
                            Operator::Gt => "Gt",
                            Operator::Lt => "Lt",
                        }
                        .into(),
                        values: r.values.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn volume_to_api(v: &Versioned<VolumeRecord>, roots: &Roots) -> v1::PersistentVolume {
    let r = &v.value;
    let path = roots.path_of(&r.meta.name, &r.source).display().to_string();
    let source = match &r.source {
        VolumeSource::Local { path } => {
            v1::persistent_volume_spec::Source::Local(v1::LocalVolumeSource { path: path.clone() })
        }
        VolumeSource::HostPath { create: false, .. } => {
            v1::persistent_volume_spec::Source::HostPath(v1::HostPathVolumeSource {
                path,
                r#type: "Directory".into(),
            })
        }
        _ => v1::persistent_volume_spec::Source::HostPath(v1::HostPathVolumeSource {
            path,
            r#type: "DirectoryOrCreate".into(),
        }),
    };
    v1::PersistentVolume {
        metadata: Some(r.meta.to_api(v.mod_revision)),
        spec: Some(v1::PersistentVolumeSpec {
            capacity: storage_map(r.capacity),
            access_modes: r
                .access_modes
                .iter()
                .map(|m| m.as_str().to_string())
                .collect(),
            persistent_volume_reclaim_policy: format!("{:?}", r.reclaim_policy),
            storage_class_name: r.class.clone(),
            node_affinity: r.node_affinity.as_ref().map(|s| v1::VolumeNodeAffinity {
                required: Some(selector_to_api(s)),
            }),
            claim_ref: r.claim_ref.as_ref().map(|c| v1::ClaimReference {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                uid: c.uid.clone(),
            }),
            source: Some(source),
            volume_mode: "Filesystem".into(),
        }),
        status: Some(v1::PersistentVolumeStatus {
            phase: format!("{:?}", r.phase),
            message: r.message.clone(),
            last_phase_transition_time: Some(r.phase_since.into()),
        }),
    }
}

fn claim_to_api(c: &Versioned<ClaimRecord>) -> v1::PersistentVolumeClaim {
    let r = &c.value;
    let modes: Vec<String> = r
        .access_modes
        .iter()
        .map(|m| m.as_str().to_string())
        .collect();
    let bound = r.phase == ClaimPhase::Bound;
    v1::PersistentVolumeClaim {
        metadata: Some(r.meta.to_api(c.mod_revision)),
        spec: Some(v1::PersistentVolumeClaimSpec {
            access_modes: modes.clone(),
            resources: Some(v1::VolumeResourceRequirements {
                requests: storage_map(r.request),
            }),
            storage_class_name: r.class.clone(),
            volume_name: r.volume.clone().unwrap_or_else(|| r.wanted_volume.clone()),
            selector: (!r.selector.is_empty()).then(|| v1::LabelSelector {
                match_labels: r.selector.clone().into_iter().collect(),
            }),
            volume_mode: "Filesystem".into(),
        }),
        status: Some(v1::PersistentVolumeClaimStatus {
            phase: format!("{:?}", r.phase),
            access_modes: if bound { modes } else { Vec::new() },
            capacity: r.capacity.map(storage_map).unwrap_or_default(),
            message: r.message.clone(),
        }),
    }
}

fn attachment_to_api(a: &AttachmentRecord) -> v1::Attachment {
    v1::Attachment {
        volume_name: a.volume.clone(),
        namespace: a.namespace.clone(),
        claim_name: a.claim.clone(),
        node: a.node.clone(),
        identity: Some(identity_to_api(&a.identity)),
        incarnation: a.incarnation,
        path: a.path.clone(),
        attached_at: Some(a.attached_at.into()),
    }
}

fn identity_to_api(r: &IdentityRef) -> v1::IdentityRef {
    v1::IdentityRef {
        namespace: r.namespace.clone(),
        set_name: r.set_name.clone(),
        ordinal: r.ordinal.into(),
    }
}

impl StorageApi {
    fn binding_to_api(&self, (claim, volume): &Binding) -> v1::ClaimBinding {
        v1::ClaimBinding {
            claim: Some(claim_to_api(claim)),
            volume: volume.as_ref().map(|v| volume_to_api(v, &self.roots)),
        }
    }
}

#[tonic::async_trait]
impl storage_server::Storage for StorageApi {
    async fn apply_storage_class(
        &self,
        request: Request<v1::ApplyStorageClassRequest>,
    ) -> Result<Response<v1::StorageClass>, Status> {
        let input = classes::parse(request.get_ref().storage_class.as_ref())?;
        let class = self.classes.apply(input).await?;
        if class.value.is_default() {
            // Claims left Pending for want of a default take this one now.
            if let Err(e) = self.claims.adopt_default().await {
                tracing::warn!(error = %e, "cannot give Pending claims the new default class");
            }
        }
        Ok(Response::new(class_to_api(&class)))
    }

    async fn get_storage_class(
        &self,
        request: Request<v1::GetStorageClassRequest>,
    ) -> Result<Response<v1::StorageClass>, Status> {
        name_check("name", &request.get_ref().name)?;
        Ok(Response::new(class_to_api(
            &self.classes.get(&request.get_ref().name).await?,
        )))
    }

    async fn list_storage_classes(
        &self,
        _: Request<v1::ListStorageClassesRequest>,
    ) -> Result<Response<v1::ListStorageClassesResponse>, Status> {
        let storage_classes = self
            .classes
            .list()
            .await?
            .iter()
            .map(class_to_api)
            .collect();
        Ok(Response::new(v1::ListStorageClassesResponse {
            storage_classes,
        }))
    }

    async fn delete_storage_class(
        &self,
        request: Request<v1::DeleteStorageClassRequest>,
    ) -> Result<Response<v1::DeleteStorageClassResponse>, Status> {
        name_check("name", &request.get_ref().name)?;
        self.classes.delete(&request.get_ref().name).await?;
        Ok(Response::new(v1::DeleteStorageClassResponse {}))
    }

    async fn apply_volume(
        &self,
        request: Request<v1::ApplyVolumeRequest>,
    ) -> Result<Response<v1::PersistentVolume>, Status> {
        let input = volumes::parse(request.get_ref().volume.as_ref(), &self.roots)?;
        Ok(Response::new(volume_to_api(
            &self.volumes.apply(input).await?,
            &self.roots,
        )))
    }

    async fn get_volume(
        &self,
        request: Request<v1::GetVolumeRequest>,
    ) -> Result<Response<v1::PersistentVolume>, Status> {
        name_check("name", &request.get_ref().name)?;
        Ok(Response::new(volume_to_api(
            &self.volumes.get(&request.get_ref().name).await?,
            &self.roots,
        )))
    }

    async fn list_volumes(
        &self,
        request: Request<v1::ListVolumesRequest>,
    ) -> Result<Response<v1::ListVolumesResponse>, Status> {
        let r = request.get_ref();
        let mut v = Violations::new();
        let page = PageRequest::parse("limit", r.limit, "continue", &r.r#continue, &mut v);
        v.into_result()?;
        let (volumes, token) = self.volumes.page(&page).await?;
        Ok(Response::new(v1::ListVolumesResponse {
            volumes: volumes
                .iter()
                .map(|v| volume_to_api(v, &self.roots))
                .collect(),
            r#continue: token,
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<v1::DeleteVolumeRequest>,
    ) -> Result<Response<v1::DeleteVolumeResponse>, Status> {
        name_check("name", &request.get_ref().name)?;
        self.volumes.delete(&request.get_ref().name).await?;
        Ok(Response::new(v1::DeleteVolumeResponse {}))
    }

    async fn apply_claim(
        &self,
        request: Request<v1::ApplyClaimRequest>,
    ) -> Result<Response<v1::PersistentVolumeClaim>, Status> {
        let input = claims::parse(request.get_ref().claim.as_ref())?;
        let (claim, _) = self.claims.apply(input).await?;
        Ok(Response::new(claim_to_api(&claim)))
    }

    async fn get_claim(
        &self,
        request: Request<v1::GetClaimRequest>,
    ) -> Result<Response<v1::PersistentVolumeClaim>, Status> {
        let r = request.get_ref();
        let namespace = namespaced(&r.namespace, &r.name)?;
        Ok(Response::new(claim_to_api(
            &self.claims.get(&namespace, &r.name).await?,
        )))
    }

    async fn list_claims(
        &self,
        request: Request<v1::ListClaimsRequest>,
    ) -> Result<Response<v1::ListClaimsResponse>, Status> {
        let r = request.get_ref();
        let selector: BTreeMap<_, _> = r.label_selector.clone().into_iter().collect();
        let mut v = Violations::new();
        if !r.namespace.is_empty() {
            v.check("namespace", validate::dns1123_label(&r.namespace));
        }
        v.check("label_selector", validate::labels(&selector));
        let page = PageRequest::parse("limit", r.limit, "continue", &r.r#continue, &mut v);
        v.into_result()?;
        let namespace = (!r.namespace.is_empty()).then_some(r.namespace.as_str());
        let (claims, token) = self.claims.page(namespace, &selector, &page).await?;
        Ok(Response::new(v1::ListClaimsResponse {
            claims: claims.iter().map(claim_to_api).collect(),
            r#continue: token,
        }))
    }

    async fn delete_claim(
        &self,
        request: Request<v1::DeleteClaimRequest>,
    ) -> Result<Response<v1::DeleteClaimResponse>, Status> {
        let r = request.get_ref();
        let namespace = namespaced(&r.namespace, &r.name)?;
        let volume = self.claims.delete(&namespace, &r.name).await?;
        Ok(Response::new(v1::DeleteClaimResponse {
            volume: volume.as_ref().map(|v| volume_to_api(v, &self.roots)),
        }))
    }

    async fn ensure_claims(
        &self,
        request: Request<v1::EnsureClaimsRequest>,
    ) -> Result<Response<v1::EnsureClaimsResponse>, Status> {
        let input = claims::parse_ensure(request.get_ref())?;
        let bindings = self.claims.ensure(input).await?;
        Ok(Response::new(v1::EnsureClaimsResponse {
            bindings: bindings.iter().map(|b| self.binding_to_api(b)).collect(),
        }))
    }

    async fn attach_volume(
        &self,
        request: Request<v1::AttachVolumeRequest>,
    ) -> Result<Response<v1::Attachment>, Status> {
        let r = request.get_ref();
        if r.node.is_empty() {
            return Err(Error::invalid("node", "is required: the node the pod runs on").into());
        }
        let input = attach::parse(
            &r.namespace,
            &r.claim_name,
            Some(&r.node),
            r.identity.as_ref(),
            r.incarnation,
        )?;
        Ok(Response::new(attachment_to_api(
            &self.attacher.attach(&input).await?,
        )))
    }

    async fn detach_volume(
        &self,
        request: Request<v1::DetachVolumeRequest>,
    ) -> Result<Response<v1::DetachVolumeResponse>, Status> {
        let r = request.get_ref();
        let input = attach::parse(
            &r.namespace,
            &r.claim_name,
            None,
            r.identity.as_ref(),
            r.incarnation,
        )?;
        let detached = self.attacher.detach(&input).await?;
        Ok(Response::new(v1::DetachVolumeResponse { detached }))
    }

    async fn list_attachments(
        &self,
        request: Request<v1::ListAttachmentsRequest>,
    ) -> Result<Response<v1::ListAttachmentsResponse>, Status> {
        let r = request.get_ref();
        let volume = r.volume_name.as_str();
        let mut v = Violations::new();
        if !volume.is_empty() {
            v.check("volume_name", validate::dns1123_subdomain(volume));
        }
        let page = PageRequest::parse("limit", r.limit, "continue", &r.r#continue, &mut v);
        v.into_result()?;
        let (attachments, token) = self
            .attacher
            .page((!volume.is_empty()).then_some(volume), &page)
            .await?;
        Ok(Response::new(v1::ListAttachmentsResponse {
            attachments: attachments.iter().map(attachment_to_api).collect(),
            r#continue: token,
        }))
    }
}
