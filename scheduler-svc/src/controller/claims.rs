//! A set's claims in storage-svc, for its retention policy.

use std::collections::BTreeSet;

use petset_core::error::Result;
use petset_core::names::{SET_LABEL, claim_name};
use petset_proto::v1;

use super::set::SetPass;
use super::status_to_error;
use crate::rules;

impl SetPass<'_> {
    /// The ordinals that still have a claim made from the set's templates.
    pub(super) async fn kept_claims(&self) -> Result<BTreeSet<u32>> {
        if self.set.value.spec.volume_claim_templates.is_empty() {
            return Ok(BTreeSet::new());
        }
        let claims = self
            .controller
            .storage
            .clone()
            .list_claims(v1::ListClaimsRequest {
                namespace: self.ns.to_string(),
                label_selector: [(SET_LABEL.to_string(), self.name.to_string())].into(),
                ..Default::default()
            })
            .await
            .map_err(status_to_error)?
            .into_inner()
            .claims;
        Ok(rules::kept_claim_ordinals(
            &self.set.value,
            claims
                .iter()
                .filter_map(|c| c.metadata.as_ref().map(|m| m.name.as_str())),
        ))
    }

    /// Deletes replica `ordinal`'s claims (retention policy `Delete`).
    pub(super) async fn delete_claims(&self, ordinal: u32) -> Result<()> {
        for template in &self.set.value.spec.volume_claim_templates {
            let Some(meta) = &template.metadata else {
                continue;
            };
            let claim = claim_name(&meta.name, self.name, ordinal);
            let deleted = self
                .controller
                .storage
                .clone()
                .delete_claim(v1::DeleteClaimRequest {
                    namespace: self.ns.to_string(),
                    name: claim.clone(),
                })
                .await;
            match deleted {
                Ok(_) => {
                    tracing::info!(claim = %format!("{}/{claim}", self.ns), "claim deleted (retention policy Delete)")
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(status_to_error(s)),
            }
        }
        Ok(())
    }
}
