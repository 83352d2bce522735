//! Creating one pod: its claims, a node, its identity, then the pod.

use petset_core::error::{Error, Result};
use petset_core::meta::MetaInput;
use petset_core::names::pod_name;
use petset_core::store::{Compare, CompareOp, TxnOp, encode};
use petset_proto::v1;

use super::set::SetPass;
use super::status_to_error;
use crate::placement::{self, Request};
use crate::revisions;
use crate::rules::{self, Placed};

impl SetPass<'_> {
    /// Creates replica `ordinal` at `revision`: ensures its claims, chooses
    /// a node where its bound volumes can be used, binds
    /// `WaitForFirstConsumer` claims there, issues its identity on the
    /// node's lease and writes the pod. A pod that could not be written
    /// gives its identity back at once.
    pub(super) async fn create_pod(&self, ordinal: u32, revision: &str) -> Result<()> {
        let (ns, set_name) = (self.ns, self.name);
        let spec = &self.set.value.spec;
        let template =
            revisions::template_of(revision, &self.update_revision, &self.template, self.stored);
        let name = pod_name(set_name, ordinal);
        let mut storage = self.controller.storage.clone();
        let mut bindings = Vec::new();
        if !spec.volume_claim_templates.is_empty() {
            bindings = storage
                .ensure_claims(self.ensure_request(ordinal, ""))
                .await
                .map_err(status_to_error)?
                .into_inner()
                .bindings;
        }
        let pod_spec = template.spec.clone().unwrap_or_default();
        let requests = rules::requests(&pod_spec);
        let (cpu_milli, memory_bytes) = requests;
        let pod_key = (ns.to_string(), name.clone());
        let request = Request {
            cpu_milli,
            memory_bytes,
            node_selector: pod_spec.node_selector.clone().into_iter().collect(),
            volume_affinity: bindings
                .iter()
                .filter_map(|b| {
                    b.volume
                        .as_ref()?
                        .spec
                        .as_ref()?
                        .node_affinity
                        .as_ref()?
                        .required
                        .as_ref()
                })
                .map(rules::node_selector)
                .collect(),
            refused_by: self.controller.refused_by(&pod_key),
        };
        let node = placement::choose(
            &request,
            &self.world.node_views(),
            &self
                .controller
                .placed(self.world, self.loads(), ns, set_name),
        )
        .map_err(|why| {
            Error::FailedPrecondition(format!("pod {ns}/{name} is unschedulable: {why}"))
        })?;
        // Counted on its node from now on, so that creates running beside
        // this one choose with it in mind; forgotten if it is not written.
        let set_key = (ns.to_string(), set_name.to_string());
        self.controller
            .assume(pod_key.clone(), set_key.clone(), &node, requests, i64::MAX);
        let written = self
            .bind_and_write(ordinal, revision, &template, &name, &node, bindings)
            .await;
        match written {
            Ok(revision) => {
                self.controller
                    .assume(pod_key, set_key, &node, requests, revision);
                Ok(())
            }
            Err(e) => {
                self.controller.unassume(&pod_key);
                Err(e)
            }
        }
    }

    /// The rest of a create once its node is chosen: binds
    /// `WaitForFirstConsumer` claims there, issues the identity on the
    /// node's lease and writes the pod; answers the write's revision.
    async fn bind_and_write(
        &self,
        ordinal: u32,
        revision: &str,
        template: &v1::PodTemplateSpec,
        name: &str,
        node: &str,
        mut bindings: Vec<v1::ClaimBinding>,
    ) -> Result<i64> {
        let ns = self.ns;
        let mut storage = self.controller.storage.clone();
        if bindings.iter().any(|b| b.volume.is_none()) {
            bindings = storage
                .ensure_claims(self.ensure_request(ordinal, node))
                .await
                .map_err(status_to_error)?
                .into_inner()
                .bindings;
            if let Some(pending) = bindings.iter().find(|b| b.volume.is_none()) {
                let claim = pending.claim.clone().unwrap_or_default();
                return Err(Error::FailedPrecondition(format!(
                    "claim {} is Pending: {}",
                    claim.metadata.map(|m| m.name).unwrap_or_default(),
                    claim.status.map(|s| s.message).unwrap_or_default()
                )));
            }
        }
        let lease = *self
            .world
            .node_leases
            .get(node)
            .ok_or_else(|| Error::FailedPrecondition(format!("node {node} lost its lease")))?;
        let meta = MetaInput {
            namespace: ns.to_string(),
            name: name.to_string(),
            ..MetaInput::default()
        }
        .create();
        let holder = format!("{node}/{}", meta.uid);
        let incarnation = self.issue(ordinal, &holder, lease).await?;
        let mut record = rules::pod_for(
            &self.set.value,
            ordinal,
            revision,
            template,
            Placed {
                meta,
                node: node.to_string(),
                incarnation,
            },
        );
        record.trace = petset_core::telemetry::current_traceparent();
        let k = self.keys().pod(ns, name);
        let written = self
            .write(
                vec![Compare::create_revision(k.clone(), CompareOp::Equal, 0)],
                vec![TxnOp::put(k, encode(&record)?, None)],
            )
            .await;
        let Ok(Some(written_at)) = written else {
            // Nobody will run this pod: give the identity back at once.
            let _ = self
                .controller
                .identities
                .clone()
                .release_identity(v1::ReleaseIdentityRequest {
                    r#ref: Some(self.identity_ref(ordinal)),
                    incarnation,
                })
                .await;
            written?;
            return Err(Error::Conflict(format!("pod {ns}/{name} exists already")));
        };
        metrics::counter!("petset_pods_created_total").increment(1);
        tracing::info!(pod = %format!("{ns}/{name}"), node = %node, incarnation, revision, "pod created");
        Ok(written_at)
    }

    /// Ensures replica `ordinal`'s claims, binding `WaitForFirstConsumer`
    /// ones on `node` when one is given.
    fn ensure_request(&self, ordinal: u32, node: &str) -> v1::EnsureClaimsRequest {
        let spec = &self.set.value.spec;
        v1::EnsureClaimsRequest {
            namespace: self.ns.to_string(),
            set_name: self.name.to_string(),
            ordinal: ordinal.into(),
            templates: spec.volume_claim_templates.clone(),
            selector_labels: spec.selector.clone().unwrap_or_default().match_labels,
            node: node.to_string(),
        }
    }

    fn identity_ref(&self, ordinal: u32) -> v1::IdentityRef {
        v1::IdentityRef {
            namespace: self.ns.into(),
            set_name: self.name.into(),
            ordinal: ordinal.into(),
        }
    }

    /// Issues replica `ordinal`'s identity to `holder` on `lease`; an
    /// identity held by a pod that no longer exists ([`rules::orphan_holder`])
    /// is released first.
    async fn issue(&self, ordinal: u32, holder: &str, lease: i64) -> Result<u64> {
        let request = v1::IssueIdentityRequest {
            r#ref: Some(self.identity_ref(ordinal)),
            service_name: self.set.value.spec.service_name.clone(),
            holder: holder.into(),
            lease_id: lease,
        };
        let incarnation = |identity: tonic::Response<v1::Identity>| {
            identity
                .into_inner()
                .holder
                .map(|h| h.incarnation)
                .unwrap_or_default()
        };
        let mut identities = self.controller.identities.clone();
        match identities.issue_identity(request.clone()).await {
            Ok(identity) => return Ok(incarnation(identity)),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
            Err(s) => return Err(status_to_error(s)),
        }
        let pod = format!("{}/{}", self.ns, pod_name(self.name, ordinal));
        let Some(orphan) = rules::orphan_holder(self.world, self.ns, self.name, ordinal) else {
            return Err(Error::FailedPrecondition(format!(
                "identity {pod} is still held; the pod is placed again once it is released or its holder's lease expires"
            )));
        };
        tracing::warn!(identity = %pod, holder = %orphan.holder, "releasing an identity no pod holds");
        identities
            .release_identity(v1::ReleaseIdentityRequest {
                r#ref: Some(self.identity_ref(ordinal)),
                incarnation: orphan.incarnation,
            })
            .await
            .map_err(status_to_error)?;
        identities
            .issue_identity(request)
            .await
            .map(incarnation)
            .map_err(status_to_error)
    }
}
