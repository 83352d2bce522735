//! Property tests of the planner: random sequences of apply, scale,
//! template change, pod readiness, pod failure, node loss and agents
//! finishing terminations, with the controller's plan carried out on a
//! model world after every step. The invariants are checked on every plan.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use scheduler_svc::planner::{
    Action, Phase, PodView, Policy, Reason, SetView, Strategy as Update, plan,
};

#[derive(Debug, Clone)]
enum Step {
    Scale(u32),
    TemplateChange,
    Ready(u32),
    Fail(u32),
    NodeLoss(u32),
    AgentsFinish,
    Reconcile,
    DeleteSet,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u32..6).prop_map(Step::Scale),
        Just(Step::TemplateChange),
        (0u32..8).prop_map(Step::Ready),
        (0u32..8).prop_map(Step::Fail),
        (0u32..8).prop_map(Step::NodeLoss),
        Just(Step::AgentsFinish),
        Just(Step::Reconcile),
        Just(Step::Reconcile),
        Just(Step::Reconcile),
        prop::bool::weighted(0.03).prop_map(|d| if d { Step::DeleteSet } else { Step::Reconcile }),
    ]
}

struct Model {
    set: SetView,
    pods: BTreeMap<u32, PodView>,
    claims: BTreeSet<u32>,
    revisions: u32,
    now: SystemTime,
    removed: bool,
    /// Whether pods fail or nodes are lost in this run.
    failures: bool,
}

impl Model {
    fn new(
        policy: Policy,
        strategy: Update,
        start: u32,
        replicas: u32,
        scaled: bool,
        deleted: bool,
    ) -> Model {
        Model::with_budget(policy, strategy, start, replicas, scaled, deleted, 1)
    }

    /// A model whose rolling updates may leave `max_unavailable` replicas
    /// unavailable.
    fn with_budget(
        policy: Policy,
        strategy: Update,
        start: u32,
        replicas: u32,
        scaled: bool,
        deleted: bool,
        max_unavailable: u32,
    ) -> Model {
        Model {
            set: SetView {
                replicas,
                start,
                policy,
                strategy,
                min_ready: Duration::from_secs(5),
                delete_claims_when_scaled: scaled,
                delete_claims_when_deleted: deleted,
                deleting: false,
                max_unavailable,
                current_revision: "r0".into(),
                update_revision: "r0".into(),
            },
            pods: BTreeMap::new(),
            claims: BTreeSet::new(),
            revisions: 0,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            removed: false,
            failures: true,
        }
    }

    fn healthy(&self, p: &PodView) -> bool {
        p.healthy(self.set.min_ready, self.now)
    }

    fn range(&self) -> std::ops::Range<u32> {
        let n = if self.set.deleting {
            0
        } else {
            self.set.replicas
        };
        self.set.start..self.set.start + n
    }

    /// Plans once, checks the invariants on the plan, and carries it out.
    fn reconcile(&mut self) -> usize {
        let views: Vec<PodView> = self.pods.values().cloned().collect();
        let actions = plan(&self.set, &views, &self.claims, self.now);
        let monotonic = self.set.policy == Policy::OrderedReady;
        let range = self.range();
        // Pods this plan deletes for an update while they are healthy.
        let updated_now: BTreeSet<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::DeletePod {
                    name,
                    reason: Reason::Update,
                } => Some(name.clone()),
                _ => None,
            })
            .filter(|name| {
                self.pods
                    .values()
                    .any(|p| p.name == *name && self.healthy(p))
            })
            .collect();
        if self.set.max_unavailable > 1 && !updated_now.is_empty() {
            // maxUnavailable: what was unavailable in the range, plus the
            // healthy pods this plan takes down, stays within the budget.
            let unavailable = range
                .clone()
                .filter(|o| self.pods.get(o).is_none_or(|p| !self.healthy(p)))
                .count();
            assert!(
                unavailable + updated_now.len() <= self.set.max_unavailable as usize,
                "{unavailable} unavailable and {updated_now:?} taken down, over maxUnavailable {}",
                self.set.max_unavailable
            );
        }
        for action in &actions {
            match action {
                Action::CreatePod { ordinal, revision } => {
                    assert!(
                        !self.pods.contains_key(ordinal),
                        "a second pod for ordinal {ordinal}: {actions:?}"
                    );
                    assert!(
                        range.contains(ordinal),
                        "created {ordinal} outside {range:?}"
                    );
                    if monotonic {
                        let lowest_missing = range.clone().find(|o| !self.pods.contains_key(o));
                        assert_eq!(
                            Some(*ordinal),
                            lowest_missing,
                            "OrderedReady creates the lowest missing ordinal first"
                        );
                        for p in self.pods.values().filter(|p| p.ordinal < *ordinal) {
                            assert!(
                                self.healthy(p),
                                "OrderedReady created {ordinal} while its predecessor {} is not Ready",
                                p.name
                            );
                        }
                    }
                    self.pods.insert(
                        *ordinal,
                        PodView {
                            name: format!("web-{ordinal}"),
                            ordinal: *ordinal,
                            revision: revision.clone(),
                            phase: Phase::Pending,
                            ready_since: None,
                            terminating: false,
                            node_ready: true,
                            identity_held: true,
                        },
                    );
                    self.claims.insert(*ordinal);
                }
                Action::DeletePod { name, reason } => {
                    let pod = self
                        .pods
                        .values()
                        .find(|p| p.name == *name)
                        .expect("deletes an existing pod")
                        .clone();
                    assert!(!pod.terminating, "deletion asked twice for {name}");
                    if *reason == Reason::ScaleDown || *reason == Reason::SetDeleted {
                        assert!(
                            !range.contains(&pod.ordinal),
                            "scaled down {name}, which is in range {range:?}"
                        );
                        let higher = self.pods.values().find(|p| {
                            p.ordinal > pod.ordinal
                                && !p.terminating
                                && !actions.iter().any(|a| matches!(a, Action::DeletePod { name, .. } if *name == p.name))
                        });
                        assert!(
                            higher.is_none(),
                            "scaled down {name} before the higher {higher:?}"
                        );
                    }
                    if monotonic && matches!(reason, Reason::ScaleDown | Reason::SetDeleted) {
                        for p in self.pods.values().filter(|p| range.contains(&p.ordinal)) {
                            assert!(
                                self.healthy(p),
                                "OrderedReady scaled down {name} while {} (in range) is unhealthy",
                                p.name
                            );
                        }
                        if !self.healthy(&pod) && pod.phase != Phase::Failed {
                            let first = self
                                .pods
                                .values()
                                .filter(|p| !self.healthy(p))
                                .map(|p| p.ordinal)
                                .min();
                            assert_eq!(
                                first,
                                Some(pod.ordinal),
                                "OrderedReady deleted the unhealthy {name} before a lower unhealthy pod"
                            );
                        }
                    }
                    if monotonic && *reason == Reason::Update && self.healthy(&pod) {
                        // The other pods of the same batch were healthy too.
                        for p in self
                            .pods
                            .values()
                            .filter(|p| p.name != *name && !updated_now.contains(&p.name))
                        {
                            assert!(
                                self.healthy(p),
                                "OrderedReady updated {name} while {} is unhealthy",
                                p.name
                            );
                        }
                    }
                    self.pods.get_mut(&pod.ordinal).expect("exists").terminating = true;
                }
                Action::RemovePod { name, .. } => {
                    let pod = self
                        .pods
                        .values()
                        .find(|p| p.name == *name)
                        .expect("removes an existing pod")
                        .clone();
                    assert!(
                        !pod.identity_held,
                        "removed {name} while its identity is held: it may still run"
                    );
                    self.pods.remove(&pod.ordinal);
                }
                Action::DeleteClaims { ordinal } => {
                    let allowed = (self.set.deleting && self.set.delete_claims_when_deleted)
                        || (!self.set.deleting
                            && self.set.delete_claims_when_scaled
                            && !range.contains(ordinal));
                    assert!(
                        allowed,
                        "claims of {ordinal} deleted against the policy {:?}",
                        self.set
                    );
                    assert!(
                        !self.pods.contains_key(ordinal),
                        "claims of {ordinal} deleted under a live pod"
                    );
                    self.claims.remove(ordinal);
                }
                Action::RemoveSet => {
                    assert!(self.set.deleting && self.pods.is_empty());
                    self.removed = true;
                }
            }
        }
        if monotonic && !self.failures {
            let not_ready: Vec<&str> = self
                .pods
                .values()
                .filter(|p| p.phase != Phase::Running || p.ready_since.is_none() || p.terminating)
                .map(|p| p.name.as_str())
                .collect();
            assert!(
                not_ready.len() <= self.set.max_unavailable.max(1) as usize,
                "OrderedReady has more pods not Ready than maxUnavailable {}: {not_ready:?}",
                self.set.max_unavailable
            );
        }
        // Time passes between activations.
        self.now += Duration::from_secs(2);
        let (_, current) = scheduler_svc::planner::status(
            &self.set,
            &self.pods.values().cloned().collect::<Vec<_>>(),
            self.now,
        );
        self.set.current_revision = current;
        actions.len()
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Scale(n) => self.set.replicas = *n,
            Step::TemplateChange => {
                self.revisions += 1;
                self.set.update_revision = format!("r{}", self.revisions);
            }
            Step::Ready(i) => {
                if let Some(p) = self.pods.get_mut(&(self.set.start + i))
                    && p.phase == Phase::Pending
                    && !p.terminating
                    && p.node_ready
                {
                    p.phase = Phase::Running;
                    p.ready_since = Some(self.now);
                }
            }
            Step::Fail(i) => {
                if let Some(p) = self.pods.get_mut(&(self.set.start + i)) {
                    p.phase = Phase::Failed;
                    p.ready_since = None;
                }
            }
            Step::NodeLoss(i) => {
                // The node's lease expires: its agent stopped the pod, and
                // the identity (on that lease) is free.
                if let Some(p) = self.pods.get_mut(&(self.set.start + i)) {
                    p.node_ready = false;
                    p.identity_held = false;
                    p.ready_since = None;
                    p.phase = Phase::Pending;
                }
            }
            Step::AgentsFinish => {
                for p in self.pods.values_mut().filter(|p| p.terminating) {
                    p.identity_held = false;
                    p.ready_since = None;
                }
            }
            Step::Reconcile => {
                self.reconcile();
            }
            Step::DeleteSet => self.set.deleting = true,
        }
    }

    /// Agents do their part and time passes until the controller is idle.
    fn settle(&mut self) {
        for _ in 0..500 {
            for p in self.pods.values_mut() {
                if p.terminating {
                    p.identity_held = false;
                } else if p.phase == Phase::Pending && p.node_ready {
                    p.phase = Phase::Running;
                    p.ready_since = Some(self.now);
                }
            }
            self.now += Duration::from_secs(10);
            if self.reconcile() == 0 && self.pods.values().all(|p| self.healthy(p)) {
                return;
            }
            if self.removed {
                return;
            }
        }
        panic!(
            "the controller never settled: {:?} {:?}",
            self.set, self.pods
        );
    }
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![Just(Policy::OrderedReady), Just(Policy::Parallel)]
}

fn strategy() -> impl Strategy<Value = Update> {
    prop_oneof![
        Just(Update::OnDelete),
        (0u32..4).prop_map(|partition| Update::RollingUpdate { partition })
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_invariants_hold_after_every_step(
        policy in policy(),
        strategy in strategy(),
        start in 0u32..3,
        replicas in 0u32..5,
        scaled in any::<bool>(),
        deleted in any::<bool>(),
        max_unavailable in prop_oneof![Just(1u32), 2u32..5],
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let mut model = Model::with_budget(policy, strategy, start, replicas, scaled, deleted, max_unavailable);
        for step in &steps {
            model.apply(step);
            if model.removed {
                return Ok(());
            }
        }
        // Left alone, the controller converges on the spec.
        model.settle();
        if model.removed {
            prop_assert!(!deleted || model.claims.is_empty());
            return Ok(());
        }
        let ordinals: Vec<u32> = model.pods.keys().copied().collect();
        let expected: Vec<u32> = model.range().collect();
        prop_assert_eq!(&ordinals, &expected, "ordinals contiguous from start");
        if let Update::RollingUpdate { partition } = strategy {
            for p in model.pods.values().filter(|p| p.ordinal >= start + partition) {
                prop_assert_eq!(&p.revision, &model.set.update_revision, "{} not updated", p.name);
            }
        }
        if scaled {
            prop_assert!(model.claims.iter().all(|o| model.range().contains(o)), "scaled-away claims are deleted");
        } else {
            prop_assert!(model.claims.is_superset(&model.range().collect()), "claims kept");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Without failures, OrderedReady never has more pods not Ready than
    /// maxUnavailable (one when unset), whatever is applied (scale up and
    /// down, template changes).
    #[test]
    fn ordered_ready_never_has_more_pods_not_ready_than_max_unavailable(
        strategy in strategy(),
        start in 0u32..3,
        replicas in 0u32..5,
        max_unavailable in prop_oneof![Just(1u32), 2u32..5],
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let mut model = Model::with_budget(Policy::OrderedReady, strategy, start, replicas, false, false, max_unavailable);
        model.failures = false;
        for step in steps.iter().filter(|s| !matches!(s, Step::Fail(_) | Step::NodeLoss(_))) {
            model.apply(step);
            if model.removed {
                return Ok(());
            }
        }
        model.settle();
    }
}

#[test]
fn max_unavailable_takes_down_a_batch_highest_first_and_waits_for_it() {
    for policy in [Policy::OrderedReady, Policy::Parallel] {
        let mut model = Model::with_budget(
            policy,
            Update::RollingUpdate { partition: 1 },
            0,
            5,
            false,
            false,
            2,
        );
        model.settle();
        model.apply(&Step::TemplateChange);
        let views: Vec<PodView> = model.pods.values().cloned().collect();
        let first = plan(&model.set, &views, &model.claims, model.now);
        assert_eq!(
            first,
            [4, 3].map(|o| Action::DeletePod {
                name: format!("web-{o}"),
                reason: Reason::Update
            }),
            "{policy:?}"
        );
        model.reconcile();
        // Nothing more while the two are down.
        let views: Vec<PodView> = model.pods.values().cloned().collect();
        assert!(
            plan(&model.set, &views, &model.claims, model.now)
                .iter()
                .all(|a| !matches!(a, Action::DeletePod { .. })),
            "{policy:?}"
        );
        model.settle();
        let revisions: Vec<&str> = model.pods.values().map(|p| p.revision.as_str()).collect();
        assert_eq!(revisions, ["r0", "r1", "r1", "r1", "r1"], "{policy:?}");
    }
}

#[test]
fn max_unavailable_resolves_counts_and_percentages_as_kubernetes() {
    use scheduler_svc::planner::resolve_max_unavailable as resolve;
    assert_eq!(resolve("", 10), 1);
    assert_eq!(resolve("3", 10), 3);
    assert_eq!(resolve("25%", 10), 3, "rounded up");
    assert_eq!(resolve("100%", 7), 7);
    assert_eq!(resolve("1%", 0), 1, "at least one");
}

#[test]
fn a_failed_pod_outside_the_range_does_not_block_scale_down() {
    // Found by the property test: web-0 failed, then the set went to 0.
    let mut model = Model::new(Policy::OrderedReady, Update::OnDelete, 0, 2, true, true);
    model.settle();
    model.apply(&Step::Fail(0));
    model.apply(&Step::Scale(0));
    model.settle();
    assert!(model.pods.is_empty() && model.claims.is_empty());
}

#[test]
fn failed_pods_outside_the_range_never_block_scale_down() {
    // Found by the property test: two condemned pods failed.
    let mut model = Model::new(Policy::OrderedReady, Update::OnDelete, 1, 3, false, false);
    model.settle();
    model.apply(&Step::Fail(0));
    model.apply(&Step::Fail(1));
    model.apply(&Step::Scale(0));
    model.settle();
    assert!(model.pods.is_empty());
}

#[test]
fn a_failed_lower_pod_is_replaced_before_anything_else_happens() {
    let mut model = Model::new(
        Policy::OrderedReady,
        Update::RollingUpdate { partition: 0 },
        0,
        3,
        false,
        false,
    );
    model.settle();
    model.apply(&Step::Fail(0));
    model.apply(&Step::Scale(5));
    let views: Vec<PodView> = model.pods.values().cloned().collect();
    let actions = plan(&model.set, &views, &model.claims, model.now);
    assert_eq!(
        actions,
        [Action::DeletePod {
            name: "web-0".into(),
            reason: Reason::Failed
        }]
    );
}

#[test]
fn reverting_a_broken_template_repairs_the_stuck_pod() {
    // kubernetes#67250: web-2 was updated to a broken revision and never
    // becomes Ready; the template is reverted.
    let mut model = Model::new(
        Policy::OrderedReady,
        Update::RollingUpdate { partition: 0 },
        0,
        3,
        false,
        false,
    );
    model.settle();
    let good = model.set.update_revision.clone();
    model.set.update_revision = "broken".into();
    model.reconcile(); // deletes web-2 for the update
    model.apply(&Step::AgentsFinish);
    model.reconcile(); // removes it
    model.reconcile(); // creates it at the broken revision; it never gets Ready
    assert_eq!(model.pods[&2].revision, "broken");
    model.set.update_revision = good.clone();
    let views: Vec<PodView> = model.pods.values().cloned().collect();
    let actions = plan(&model.set, &views, &model.claims, model.now);
    assert_eq!(
        actions,
        [Action::DeletePod {
            name: "web-2".into(),
            reason: Reason::Update
        }]
    );
    model.settle();
    assert!(model.pods.values().all(|p| p.revision == good));
}

#[test]
fn a_pod_on_a_lost_node_waits_while_its_identity_is_held() {
    let mut model = Model::new(Policy::OrderedReady, Update::OnDelete, 0, 2, false, false);
    model.settle();
    model.pods.get_mut(&1).unwrap().node_ready = false;
    let views: Vec<PodView> = model.pods.values().cloned().collect();
    assert!(
        plan(&model.set, &views, &model.claims, model.now).is_empty(),
        "nothing while web-1 may still run"
    );
    model.pods.get_mut(&1).unwrap().identity_held = false;
    let views: Vec<PodView> = model.pods.values().cloned().collect();
    let actions = plan(&model.set, &views, &model.claims, model.now);
    assert_eq!(
        actions[0],
        Action::RemovePod {
            name: "web-1".into(),
            reason: Reason::NodeLost
        }
    );
    assert!(matches!(actions[1], Action::CreatePod { ordinal: 1, .. }));
}

#[test]
fn scale_down_waits_for_a_deletion_in_flight() {
    // Found by the property test: an update was deleting web-0 when the set
    // was deleted; web-1 must wait until web-0 is gone.
    let mut model = Model::new(
        Policy::OrderedReady,
        Update::RollingUpdate { partition: 0 },
        0,
        2,
        false,
        false,
    );
    model.failures = false;
    model.settle();
    model.set.update_revision = "r1".into();
    model.reconcile(); // deletes web-1 for the update
    model.apply(&Step::AgentsFinish);
    model.reconcile(); // removes web-1
    model.reconcile(); // creates web-1 at r1
    model.settle(); // ... and web-0 is deleted for the update
    model.set.update_revision = "r2".into();
    model.reconcile(); // an update deletion in flight
    let terminating: Vec<_> = model
        .pods
        .values()
        .filter(|p| p.terminating)
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(terminating.len(), 1);
    model.set.deleting = true;
    let views: Vec<PodView> = model.pods.values().cloned().collect();
    assert!(
        plan(&model.set, &views, &model.claims, model.now).is_empty(),
        "nothing while {terminating:?} is being deleted"
    );
}
