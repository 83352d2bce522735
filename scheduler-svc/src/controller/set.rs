//! One set's pass: its revisions, the plan's actions in order, its status.

use std::collections::BTreeSet;
use std::time::SystemTime;

use petset_core::error::{Error, Result};
use petset_core::store::{Compare, CompareOp, DeleteOptions, TxnOp, Versioned, encode};
use petset_proto::v1;
use tracing::Instrument as _;

use super::Controller;
use crate::leader::Term;
use crate::placement::{self, Loads};
use crate::planner::{self, Action, PodView, Policy, Reason, SetView};
use crate::records::{Deletion, Keys, PodRecord, RevisionRecord, SetRecord, SetStatusRecord};
use crate::revisions;
use crate::rules::{pod_view, set_view};
use crate::world::World;

/// Most creates of one Parallel set that run at once.
const MAX_CREATES: usize = 64;

/// Everything one set's pass works on: the set, the world it was read in,
/// and its revisions.
pub(super) struct SetPass<'a> {
    pub(super) controller: &'a Controller,
    pub(super) term: &'a Term,
    pub(super) world: &'a World,
    pub(super) set: &'a Versioned<SetRecord>,
    pub(super) ns: &'a str,
    pub(super) name: &'a str,
    /// The set's stored revisions, oldest first.
    pub(super) stored: &'a [Versioned<RevisionRecord>],
    /// The spec's template, and its revision.
    pub(super) template: v1::PodTemplateSpec,
    pub(super) update_revision: String,
    /// Each node's load from the world's pods, summed once for the pass.
    loads: std::sync::OnceLock<Loads>,
}

impl<'a> SetPass<'a> {
    pub(super) fn new(
        controller: &'a Controller,
        term: &'a Term,
        world: &'a World,
        set: &'a Versioned<SetRecord>,
    ) -> Self {
        let ns = set.value.meta.namespace.as_str();
        let name = set.value.meta.name.as_str();
        let template = set.value.spec.template.clone().unwrap_or_default();
        let update_revision = revisions::revision_name(name, &template);
        let stored = world
            .revisions
            .get(&(ns.to_string(), name.to_string()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        SetPass {
            controller,
            term,
            world,
            set,
            ns,
            name,
            stored,
            template,
            update_revision,
            loads: std::sync::OnceLock::new(),
        }
    }

    /// Each node's load from the world's pods (as placement counts them
    /// for this set), summed the first time a create asks.
    pub(super) fn loads(&self) -> &Loads {
        self.loads.get_or_init(|| {
            let mut loads = Loads::new();
            placement::add(&mut loads, self.world.bound(self.ns, self.name));
            loads
        })
    }

    pub(super) fn keys(&self) -> Keys<'_> {
        Keys(&self.controller.store)
    }

    fn status(&self) -> Option<&'a Versioned<SetStatusRecord>> {
        self.world
            .statuses
            .get(&(self.ns.to_string(), self.name.to_string()))
    }

    /// Plans the set and takes the actions in order, stopping at the first
    /// that cannot be done now. Answers the actions taken and why the pass
    /// stopped early, if it did.
    pub(super) async fn run(&self) -> Result<(usize, Option<String>)> {
        if self.set.value.deleting.is_none() {
            self.record_revision().await?;
        }
        let current_revision = revisions::current_revision(
            self.status().map(|s| s.value.current_revision.as_str()),
            self.stored,
            &self.update_revision,
        );
        let view = set_view(&self.set.value, &current_revision, &self.update_revision);
        let pods: Vec<&Versioned<PodRecord>> = self.world.pods_of(self.ns, self.name).collect();
        let views: Vec<PodView> = pods
            .iter()
            .map(|p| pod_view(self.world, &p.value))
            .collect();
        let claim_ordinals = if view.delete_claims_when_scaled || view.delete_claims_when_deleted {
            self.kept_claims().await?
        } else {
            BTreeSet::new()
        };
        let now = SystemTime::now();
        let actions = planner::plan(&view, &views, &claim_ordinals, now);
        let mut blocked = None;
        let mut taken = 0;
        // A Parallel set's creates that follow one another in the plan run
        // side by side, in batches of 1, 2, 4, ... up to MAX_CREATES
        // (Kubernetes' slowStartBatch): a set that cannot create one pod
        // does not try a thousand. Every other action runs alone, in order.
        let parallel = view.policy == Policy::Parallel;
        let mut batch = 1;
        let mut next = 0;
        while next < actions.len() {
            let creates = actions[next..]
                .iter()
                .take_while(|a| matches!(a, Action::CreatePod { .. }))
                .count();
            let n = if parallel && creates > 0 {
                creates.min(batch)
            } else {
                1
            };
            let group = &actions[next..next + n];
            next += n;
            if n > 1 {
                batch = (batch * 2).min(MAX_CREATES);
            } else if matches!(group[0], Action::CreatePod { .. }) {
                batch = 2;
            }
            let outcomes =
                futures::future::join_all(group.iter().map(|a| self.act(a, &pods, now))).await;
            for (action, outcome) in group.iter().zip(outcomes) {
                match outcome {
                    Ok(()) => taken += 1,
                    Err(e) if e.is_deposed() => return Err(e),
                    Err(e) => {
                        tracing::debug!(set = %format!("{}/{}", self.ns, self.name), ?action, error = %e, "action postponed");
                        blocked.get_or_insert(e.to_string());
                    }
                }
            }
            if blocked.is_some() {
                break;
            }
        }
        if !matches!(actions.last(), Some(Action::RemoveSet)) || blocked.is_some() {
            self.write_status(&view, &views, blocked.clone()).await?;
        }
        Ok((taken, blocked))
    }

    /// Takes one action of the plan, as a span in the trace of the change
    /// that caused it (the set's stored traceparent), when traced.
    async fn act(
        &self,
        action: &Action,
        pods: &[&Versioned<PodRecord>],
        now: SystemTime,
    ) -> Result<()> {
        tracing::debug!(set = %format!("{}/{}", self.ns, self.name), ?action, "acting");
        let pod = |name: &str| {
            *pods
                .iter()
                .find(|p| p.value.meta.name == name)
                .expect("planned from these pods")
        };
        let span = tracing::info_span!("statefulset action", set = %format!("{}/{}", self.ns, self.name), ?action);
        if let Some(parent) = &self.set.value.trace {
            petset_core::telemetry::set_remote_parent(&span, parent);
        }
        async {
            match action {
                Action::CreatePod { ordinal, revision } => {
                    self.create_pod(*ordinal, revision).await
                }
                Action::DeletePod { name, reason } => {
                    self.delete_pod(pod(name), *reason, now).await
                }
                Action::RemovePod { name, reason } => self.remove_pod(pod(name), *reason).await,
                Action::DeleteClaims { ordinal } => self.delete_claims(*ordinal).await,
                Action::RemoveSet => self.remove_set().await,
            }
        }
        .instrument(span)
        .await
    }

    /// Writes `ops` if the key `guard` is still at `revision`; answers
    /// whether it was written.
    async fn write_if(&self, guard: String, revision: i64, ops: Vec<TxnOp>) -> Result<bool> {
        let compares = vec![Compare::mod_revision(guard, CompareOp::Equal, revision)];
        Ok(self.write(compares, ops).await?.is_some())
    }

    /// Writes `ops` under the leader's term if `compares` hold; answers the
    /// revision written, which the next pass waits for.
    pub(super) async fn write(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<Option<i64>> {
        let written = self
            .term
            .write_at(&self.controller.store, compares, ops)
            .await?;
        if let Some(revision) = written {
            self.controller.wrote(revision);
        }
        Ok(written)
    }

    /// Records the update revision unless it is the newest already, then
    /// prunes the history.
    async fn record_revision(&self) -> Result<()> {
        let Some(record) = revisions::next_record(
            self.stored,
            &self.update_revision,
            &self.template,
            SystemTime::now(),
        ) else {
            return self.truncate_history().await;
        };
        let k = self.keys().revision(self.ns, self.name, &record.name);
        let expected = self
            .stored
            .iter()
            .find(|r| r.value.name == record.name)
            .map(|e| e.mod_revision)
            .unwrap_or(0);
        self.write_if(
            k.clone(),
            expected,
            vec![TxnOp::put(k, encode(&record)?, None)],
        )
        .await?;
        tracing::info!(set = %format!("{}/{}", self.ns, self.name), revision = %record.name, number = record.revision, "revision recorded");
        Ok(())
    }

    async fn truncate_history(&self) -> Result<()> {
        let limit = self
            .set
            .value
            .spec
            .revision_history_limit
            .unwrap_or(10)
            .max(0) as usize;
        let current = self
            .status()
            .map(|s| s.value.current_revision.clone())
            .unwrap_or_default();
        let live: BTreeSet<String> = self
            .world
            .pods_of(self.ns, self.name)
            .map(|p| p.value.revision.clone())
            .chain([current, self.update_revision.clone()])
            .collect();
        for old in revisions::to_prune(self.stored, &live, limit) {
            let k = self.keys().revision(self.ns, self.name, &old.value.name);
            self.write_if(k.clone(), old.mod_revision, vec![TxnOp::delete(k, None)])
                .await?;
        }
        Ok(())
    }

    /// Asks for a pod's graceful deletion (its agent stops it).
    async fn delete_pod(
        &self,
        pod: &Versioned<PodRecord>,
        reason: Reason,
        now: SystemTime,
    ) -> Result<()> {
        // A node that refused the pod (the kubelet's admission) is not
        // given its replacement again at once.
        let key = (self.ns.to_string(), pod.value.meta.name.clone());
        if matches!(reason, Reason::Failed)
            && let Some(status) = self.world.pod_status.get(&key)
            && status.incarnation == pod.value.incarnation
            && status.reason.starts_with("OutOf")
        {
            self.controller
                .remember_refusal(key, &pod.value.node, &status.reason);
        }
        let mut record = pod.value.clone();
        record.deletion = Some(Deletion {
            requested_at: now,
            grace_seconds: record.spec.termination_grace_period_seconds.unwrap_or(30),
            reason: format!("{reason:?}"),
        });
        let k = self.keys().pod(self.ns, &record.meta.name);
        if self
            .write_if(
                k.clone(),
                pod.mod_revision,
                vec![TxnOp::put(k, encode(&record)?, None)],
            )
            .await?
        {
            tracing::info!(pod = %format!("{}/{}", self.ns, record.meta.name), ?reason, "pod deletion asked for");
        }
        Ok(())
    }

    /// Removes a pod whose identity is no longer held; one freed by a lease
    /// expiry only after the fence margin.
    async fn remove_pod(&self, pod: &Versioned<PodRecord>, reason: Reason) -> Result<()> {
        let name = &pod.value.meta.name;
        let freed = (self.ns.to_string(), name.clone(), pod.value.incarnation);
        if matches!(reason, Reason::NodeLost | Reason::IdentityLost)
            && let Some(left) = self.controller.margin_left(&freed)
        {
            // The old copy's fence fired at two thirds of the lease; this
            // covers clocks that run at other rates.
            return Err(Error::FailedPrecondition(format!(
                "pod {name}'s identity was freed by its node's lease expiry; \
                 replacing it in {left:?} (fence margin {:?})",
                self.controller.fence_margin
            )));
        }
        let k = self.keys().pod(self.ns, name);
        let ops = vec![
            TxnOp::delete(k.clone(), None),
            TxnOp::delete(self.keys().pod_status(self.ns, name), None),
        ];
        if self.write_if(k, pod.mod_revision, ops).await? {
            self.controller.forget_freed(&freed);
            metrics::counter!("petset_pods_removed_total", "reason" => format!("{reason:?}"))
                .increment(1);
            tracing::info!(pod = %format!("{}/{name}", self.ns), ?reason, "pod removed");
        }
        Ok(())
    }

    /// Removes a deleted set whose pods (and claims, where asked) are gone.
    async fn remove_set(&self) -> Result<()> {
        let keys = self.keys();
        let set_key = keys.set(self.ns, self.name);
        let ops = vec![
            TxnOp::delete(set_key.clone(), None),
            TxnOp::delete(keys.status(self.ns, self.name), None),
            TxnOp::delete(
                keys.revisions(self.ns, self.name),
                Some(DeleteOptions::new().with_prefix()),
            ),
        ];
        if self.write_if(set_key, self.set.mod_revision, ops).await? {
            tracing::info!(set = %format!("{}/{}", self.ns, self.name), "statefulset deleted");
        }
        Ok(())
    }

    async fn write_status(
        &self,
        view: &SetView,
        pods: &[PodView],
        blocked: Option<String>,
    ) -> Result<()> {
        let (counts, current_revision) = planner::status(view, pods, SystemTime::now());
        let status = SetStatusRecord {
            observed_generation: self.set.value.meta.generation,
            replicas: counts.replicas,
            ready_replicas: counts.ready,
            available_replicas: counts.available,
            current_replicas: counts.current,
            updated_replicas: counts.updated,
            current_revision,
            update_revision: view.update_revision.clone(),
            blocked,
        };
        let existing = self.status();
        if existing.is_some_and(|e| e.value == status) {
            return Ok(());
        }
        let k = self.keys().status(self.ns, self.name);
        self.write_if(
            k.clone(),
            existing.map(|e| e.mod_revision).unwrap_or(0),
            vec![TxnOp::put(k, encode(&status)?, None)],
        )
        .await?;
        Ok(())
    }
}
