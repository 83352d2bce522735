//! The StatefulSet controller's decision: a pure function from one set and
//! the pods observed to the next actions. No tokio, no etcd; the executor
//! carries the actions out and calls [`plan`] again on what it then reads.
//!
//! # Rules (Kubernetes' `pkg/controller/statefulset`, then beyond)
//! - A pod is removed once its identity is no longer held by its
//!   incarnation: the node agent released it after stopping the pod (a
//!   deletion), or the node's lease expired (the agent stopped it itself),
//!   or the agent restarted under a new lease. A pod on a lost node whose
//!   identity is still held waits: it may still run.
//! - Replicas are ordinals `start..start+replicas`, in order. A missing one
//!   is created; a Failed one is deleted (and created again). OrderedReady
//!   creates ordinal `i` only when every lower replica is Running, Ready and
//!   available for `minReadySeconds`, and does one thing at a time;
//!   Parallel does not wait.
//! - Pods outside the range are deleted highest ordinal first, one at a
//!   time under OrderedReady (each after any deletion in flight is done),
//!   and not while any pod in the range is
//!   unhealthy; an unhealthy one waits unless it is the first unhealthy pod
//!   (as Kubernetes: otherwise a failed lower pod outside the range would
//!   block the scale-down for ever). Beyond Kubernetes, a Failed pod outside
//!   the range goes in its turn whatever else is unhealthy: it will never be
//!   Ready, and waiting for it would block for ever.
//! - RollingUpdate replaces pods not at the update revision, from the
//!   highest ordinal down to the partition, one at a time, each after the
//!   one above is healthy. OnDelete replaces a pod only when it is deleted.
//! - With `maxUnavailable` above 1 (Kubernetes' `MaxUnavailableStatefulSet`,
//!   KEP-961, without its feature gate): every replica in the range that is
//!   missing, terminating or not available counts as unavailable, and as
//!   many outdated pods as the rest of the budget allows are deleted at
//!   once, highest ordinal first, down to the partition. Under OrderedReady
//!   this starts only once every replica is healthy, and the replacements
//!   are still created one at a time, in order.
//! - Beyond Kubernetes (kubernetes#67250): a replica stuck unhealthy at an
//!   outdated revision in the update range is replaced, so that reverting a
//!   broken template repairs the set without a person deleting pods.
//! - Claims of ordinals that left the range are deleted only where
//!   `whenScaled: Delete`, and only once their pod is gone; when the set is
//!   deleted, only where `whenDeleted: Delete`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// How pods are created and deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// One at a time, in order, each after the previous is Ready.
    OrderedReady,
    /// All at once.
    Parallel,
}

/// How template changes reach pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Replace pods at or above `partition` (an index from `start`).
    RollingUpdate {
        /// Pods below keep the current revision.
        partition: u32,
    },
    /// Replace a pod only when it is deleted.
    OnDelete,
}

/// What the planner needs of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetView {
    /// Wanted replicas.
    pub replicas: u32,
    /// The first ordinal.
    pub start: u32,
    /// Pod management policy.
    pub policy: Policy,
    /// Update strategy.
    pub strategy: Strategy,
    /// How long a pod must have been Ready to be available.
    pub min_ready: Duration,
    /// Delete claims of ordinals scaled away.
    pub delete_claims_when_scaled: bool,
    /// Delete claims when the set is deleted.
    pub delete_claims_when_deleted: bool,
    /// Deletion of the set was asked for.
    pub deleting: bool,
    /// How many replicas a rolling update may leave unavailable at once
    /// (`maxUnavailable`, resolved against `replicas`; 1 when unset).
    pub max_unavailable: u32,
    /// The revision pods below the partition keep.
    pub current_revision: String,
    /// The revision of the spec's template.
    pub update_revision: String,
}

/// A pod's phase, as its node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bound, not running yet.
    Pending,
    /// Running.
    Running,
    /// Exited 0 (a StatefulSet pod should not).
    Succeeded,
    /// Failed.
    Failed,
}

/// What the planner needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Its name.
    pub name: String,
    /// Its ordinal.
    pub ordinal: u32,
    /// The revision it was made from.
    pub revision: String,
    /// As reported.
    pub phase: Phase,
    /// Ready, and since when.
    pub ready_since: Option<SystemTime>,
    /// Deletion asked for.
    pub terminating: bool,
    /// Its node's lease is alive.
    pub node_ready: bool,
    /// Its identity is held by its incarnation.
    pub identity_held: bool,
}

impl PodView {
    fn running_and_ready(&self) -> bool {
        self.phase == Phase::Running && self.ready_since.is_some() && !self.terminating
    }

    /// Running, Ready for `min_ready`, not terminating.
    pub fn healthy(&self, min_ready: Duration, now: SystemTime) -> bool {
        self.running_and_ready()
            && self
                .ready_since
                .is_some_and(|since| since + min_ready <= now)
    }
}

/// Why a pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its ordinal left the range.
    ScaleDown,
    /// It is not at the update revision.
    Update,
    /// It failed.
    Failed,
    /// Its node is lost and its identity free.
    NodeLost,
    /// Its identity is free though its node is Ready (the agent restarted
    /// under a new lease).
    IdentityLost,
    /// Its deletion completed.
    Terminated,
    /// The set is being deleted.
    SetDeleted,
}

/// One step for the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the replica `ordinal` from `revision`.
    CreatePod {
        /// Ordinal.
        ordinal: u32,
        /// Revision name.
        revision: String,
    },
    /// Ask for a pod's graceful deletion.
    DeletePod {
        /// Pod name.
        name: String,
        /// Why.
        reason: Reason,
    },
    /// Remove a pod's record: it has stopped (or cannot run any more).
    RemovePod {
        /// Pod name.
        name: String,
        /// Why.
        reason: Reason,
    },
    /// Delete the claims of `ordinal` (retention policy `Delete`).
    DeleteClaims {
        /// Ordinal.
        ordinal: u32,
    },
    /// Every pod is gone: remove the set.
    RemoveSet,
}

/// The next actions for `set`, given its `pods` and the ordinals that have
/// claims, at `now`.
pub fn plan(
    set: &SetView,
    pods: &[PodView],
    claim_ordinals: &BTreeSet<u32>,
    now: SystemTime,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let monotonic = set.policy == Policy::OrderedReady;
    // Pods whose end is settled leave first; the rest of the plan does not
    // see them.
    let mut live: BTreeMap<u32, &PodView> = BTreeMap::new();
    for pod in pods {
        if !pod.identity_held {
            let reason = if pod.terminating {
                Reason::Terminated
            } else if !pod.node_ready {
                Reason::NodeLost
            } else {
                Reason::IdentityLost
            };
            actions.push(Action::RemovePod {
                name: pod.name.clone(),
                reason,
            });
        } else {
            live.insert(pod.ordinal, pod);
        }
    }
    let (start, replicas) = if set.deleting {
        (set.start, 0)
    } else {
        (set.start, set.replicas)
    };
    let end = start.saturating_add(replicas);
    let healthy = |p: &PodView| p.healthy(set.min_ready, now);

    if set.deleting && live.is_empty() && actions.is_empty() {
        if set.delete_claims_when_deleted {
            actions.extend(
                claim_ordinals
                    .iter()
                    .map(|&ordinal| Action::DeleteClaims { ordinal }),
            );
        }
        actions.push(Action::RemoveSet);
        return actions;
    }

    // Replicas, in order.
    for ordinal in start..end {
        match live.get(&ordinal) {
            None => {
                actions.push(Action::CreatePod {
                    ordinal,
                    revision: revision_for(set, ordinal),
                });
                if monotonic {
                    return actions;
                }
            }
            Some(pod)
                if matches!(pod.phase, Phase::Failed | Phase::Succeeded) && !pod.terminating =>
            {
                actions.push(Action::DeletePod {
                    name: pod.name.clone(),
                    reason: Reason::Failed,
                });
                if monotonic {
                    return actions;
                }
            }
            Some(pod) if pod.terminating => {
                if monotonic {
                    return actions;
                }
            }
            Some(pod) if !healthy(pod) => {
                if in_update_range(set, ordinal) && pod.revision != set.update_revision {
                    // Stuck at an outdated revision: replace rather than wait.
                    actions.push(Action::DeletePod {
                        name: pod.name.clone(),
                        reason: Reason::Update,
                    });
                }
                if monotonic {
                    return actions;
                }
            }
            Some(_) => {}
        }
    }

    // Pods outside the range, highest ordinal first.
    let condemned: Vec<&PodView> = live
        .values()
        .rev()
        .filter(|p| p.ordinal < start || p.ordinal >= end)
        .copied()
        .collect();
    for pod in &condemned {
        if pod.terminating {
            if monotonic {
                return actions;
            }
            continue;
        }
        // Kubernetes' rule: an unhealthy target waits unless it is the
        // first unhealthy pod (in range first, then the lowest condemned
        // one); a healthy one goes. Under OrderedReady every pod in range is
        // healthy by the time this loop runs (the loop above returned
        // otherwise), so scale-down never starts while one of them is not.
        let first_unhealthy = live
            .values()
            .filter(|p| !healthy(p))
            .min_by_key(|p| (p.ordinal < start || p.ordinal >= end, p.ordinal))
            .map(|p| p.ordinal);
        // One deletion at a time: wait until any pod being deleted is gone
        // (an update's deletion, say), not only the one above.
        if monotonic && live.values().any(|p| p.terminating) {
            return actions;
        }
        let failed = matches!(pod.phase, Phase::Failed | Phase::Succeeded);
        if monotonic && !healthy(pod) && !failed && first_unhealthy != Some(pod.ordinal) {
            return actions;
        }
        actions.push(Action::DeletePod {
            name: pod.name.clone(),
            reason: if set.deleting {
                Reason::SetDeleted
            } else {
                Reason::ScaleDown
            },
        });
        if monotonic {
            return actions;
        }
    }

    // Claims of ordinals that left the range and whose pod is gone.
    if set.delete_claims_when_scaled && !set.deleting {
        for &ordinal in claim_ordinals {
            if (ordinal < start || ordinal >= end) && !live.contains_key(&ordinal) {
                actions.push(Action::DeleteClaims { ordinal });
            }
        }
    }

    // Rolling update, from the highest ordinal down to the partition.
    if let Strategy::RollingUpdate { partition } = set.strategy
        && !set.deleting
    {
        let first = start.saturating_add(partition);
        if set.max_unavailable > 1 {
            update_in_batches(set, &live, start..end, first, &healthy, &mut actions);
            return actions;
        }
        for ordinal in (first..end).rev() {
            let Some(pod) = live.get(&ordinal) else {
                continue;
            };
            if pod.revision != set.update_revision && !pod.terminating {
                let already = actions
                    .iter()
                    .any(|a| matches!(a, Action::DeletePod { name, .. } if *name == pod.name));
                if !already {
                    actions.push(Action::DeletePod {
                        name: pod.name.clone(),
                        reason: Reason::Update,
                    });
                }
                return actions;
            }
            if !healthy(pod) {
                return actions;
            }
        }
    }
    actions
}

/// `maxUnavailable` above 1: deletes as many outdated pods, highest
/// ordinal first and down to `first`, as leave at most `max_unavailable`
/// replicas of `range` unavailable (missing, terminating, being deleted by
/// this plan, or not healthy).
fn update_in_batches(
    set: &SetView,
    live: &BTreeMap<u32, &PodView>,
    range: std::ops::Range<u32>,
    first: u32,
    healthy: &dyn Fn(&PodView) -> bool,
    actions: &mut Vec<Action>,
) {
    let deleting: BTreeSet<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let unavailable = range
        .clone()
        .filter(|o| {
            live.get(o)
                .is_none_or(|p| !healthy(p) || deleting.contains(&p.name))
        })
        .count() as u32;
    let mut budget = set.max_unavailable.saturating_sub(unavailable);
    for ordinal in (first..range.end).rev() {
        if budget == 0 {
            return;
        }
        let Some(pod) = live.get(&ordinal) else {
            continue;
        };
        if pod.revision != set.update_revision && !pod.terminating && !deleting.contains(&pod.name)
        {
            actions.push(Action::DeletePod {
                name: pod.name.clone(),
                reason: Reason::Update,
            });
            budget -= 1;
        }
    }
}

/// `maxUnavailable` as a number of replicas: a count, or a percentage of
/// `replicas` rounded up (as Kubernetes); at least 1, and 1 when unset.
pub fn resolve_max_unavailable(text: &str, replicas: u32) -> u32 {
    let n = match text.strip_suffix('%') {
        Some(percent) => percent
            .parse::<u64>()
            .map(|p| (p * u64::from(replicas)).div_ceil(100))
            .unwrap_or(1),
        None => text.parse::<u64>().unwrap_or(1),
    };
    n.clamp(1, u64::from(u32::MAX)) as u32
}

fn in_update_range(set: &SetView, ordinal: u32) -> bool {
    match set.strategy {
        Strategy::RollingUpdate { partition } => ordinal >= set.start.saturating_add(partition),
        Strategy::OnDelete => false,
    }
}

/// The revision a new pod at `ordinal` is made from: below the partition,
/// the current one; otherwise the update revision.
pub fn revision_for(set: &SetView, ordinal: u32) -> String {
    match set.strategy {
        Strategy::RollingUpdate { .. } if !in_update_range(set, ordinal) => {
            set.current_revision.clone()
        }
        _ => set.update_revision.clone(),
    }
}

/// Counts for a set's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pods that exist.
    pub replicas: u32,
    /// Running and Ready.
    pub ready: u32,
    /// Ready for minReadySeconds.
    pub available: u32,
    /// At the current revision, not terminating.
    pub current: u32,
    /// At the update revision, not terminating.
    pub updated: u32,
}

/// The status counts of `pods`, and the current revision after them: once
/// every replica is updated and ready, the update revision becomes current.
pub fn status(set: &SetView, pods: &[PodView], now: SystemTime) -> (Counts, String) {
    let mut c = Counts::default();
    for pod in pods {
        c.replicas += 1;
        if pod.running_and_ready() {
            c.ready += 1;
            if pod.healthy(set.min_ready, now) {
                c.available += 1;
            }
        }
        if !pod.terminating {
            if pod.revision == set.current_revision {
                c.current += 1;
            }
            if pod.revision == set.update_revision {
                c.updated += 1;
            }
        }
    }
    let mut current = set.current_revision.clone();
    if matches!(set.strategy, Strategy::RollingUpdate { .. })
        && c.updated == set.replicas
        && c.ready == set.replicas
        && c.replicas == set.replicas
    {
        current = set.update_revision.clone();
        c.current = c.updated;
    }
    (c, current)
}
