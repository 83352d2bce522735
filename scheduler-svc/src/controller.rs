//! The executor: reads the world, asks the planner what to do for each set,
//! and carries it out through identity-svc, storage-svc and etcd writes
//! guarded by the leader's term.
//!
//! # Expected flow (one activation)
//! 1. Read every key in one range read ([`World::read`]).
//! 2. For each set: make sure its template's revision exists, plan, and run
//!    the actions in order, stopping at the first that cannot be done now.
//! 3. Write each set's status when it changed.
//!
//! Activations run when anything under the root changes (an etcd watch) and
//! every second (for `minReadySeconds` and retries); a set whose last
//! activation was postponed waits out its [`Backoff`] first. Every action is
//! idempotent against a re-read world: creating a pod that exists fails its
//! create-if-absent compare, a deletion already asked for is not asked
//! again.
//!
//! # Creating a pod
//! Ensure its claims (storage-svc), choose a node where its bound volumes
//! can be used, bind `WaitForFirstConsumer` claims for that node, issue its
//! identity (identity-svc) to `<node>/<pod uid>` under the node's lease, and
//! write the pod bound to the node. The identity lives on the node's lease:
//! when the node is lost, the identity is free exactly when the node's agent
//! has stopped (it stops its pods when it cannot renew the lease).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::WatchOptions;
use petset_core::error::{Error, Result, Violations};
use petset_core::identity::pod_name;
use petset_core::meta::MetaInput;
use petset_core::quantity::Quantity;
use petset_core::selector::NodeSelector;
use petset_core::shutdown::CancellationToken;
use petset_core::store::{Compare, CompareOp, DeleteOptions, Store, TxnOp, Versioned, encode};
use petset_proto::v1;
use petset_proto::v1::identities_client::IdentitiesClient;
use petset_proto::v1::storage_client::StorageClient;
use tonic::transport::Channel;

use crate::leader::Term;
use crate::placement::{self, Bound, NodeView, Request};
use crate::planner::{self, Action, Phase, PodView, Policy, SetView, Strategy};
use crate::records::{
    Deletion, Keys, POD_INDEX_LABEL, POD_NAME_LABEL, PodRecord, REVISION_LABEL, RevisionRecord,
    SetRecord, SetStatusRecord,
};
use crate::revisions;
use crate::sets;
use crate::world::{Name, World};

/// `(namespace, pod, incarnation)` of a pod whose identity a lease expiry
/// freed.
type FreedPod = (String, String, u64);

/// The first wait after a set's activation was postponed.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between tries of a postponed set.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Per-set back-off after a postponed activation (Kubernetes' work queue
/// rate limiter, per item): 250 ms, doubled on each further postponement
/// with the same reason, at most 10 s; reset by a success or by a change to
/// the set's own record.
#[derive(Debug, Default)]
pub struct Backoff {
    sets: BTreeMap<Name, Postponed>,
}

#[derive(Debug)]
struct Postponed {
    /// The set's record and the nodes' leases when it was postponed: a
    /// change to either may unblock it, so it is tried at once.
    set_revision: (i64, u64),
    reason: String,
    delay: Duration,
    until: Instant,
}

impl Backoff {
    /// Whether `set` (at `set_revision`: its record's and the nodes'
    /// version) is still waiting at `now`.
    pub fn waiting(&self, set: &Name, set_revision: (i64, u64), now: Instant) -> bool {
        self.sets
            .get(set)
            .is_some_and(|p| p.set_revision == set_revision && now < p.until)
    }

    /// Records a postponement; answers the wait when the reason is new (to
    /// be logged), `None` when it repeats.
    pub fn postponed(
        &mut self,
        set: Name,
        set_revision: (i64, u64),
        reason: &str,
        now: Instant,
    ) -> Option<Duration> {
        let (delay, new) = match self.sets.get(&set) {
            Some(p) if p.reason == reason && p.set_revision == set_revision => {
                ((p.delay * 2).min(BACKOFF_MAX), false)
            }
            _ => (BACKOFF_FIRST, true),
        };
        self.sets.insert(
            set,
            Postponed {
                set_revision,
                reason: reason.to_owned(),
                delay,
                until: now + delay,
            },
        );
        new.then_some(delay)
    }

    /// When the earliest back-off ends.
    pub fn next_wake(&self) -> Option<Instant> {
        self.sets.values().map(|p| p.until).min()
    }

    /// Forgets `set`'s back-off after an activation that went through.
    pub fn done(&mut self, set: &Name) {
        self.sets.remove(set);
    }
}

/// The label storage-svc puts on a claim made from a set's template.
const CLAIM_SET_LABEL: &str = "petset.io/set";

/// Runs the controller while this replica leads.
#[derive(Debug, Clone)]
pub struct Controller {
    store: Store,
    backoff: Arc<Mutex<Backoff>>,
    /// How long after a pod's identity was seen freed by a lease expiry
    /// before the pod is replaced (see ARCHITECTURE, "The fence").
    fence_margin: Duration,
    /// When each `(ns, pod, incarnation)` was first seen so freed.
    unheld: Arc<Mutex<BTreeMap<FreedPod, Instant>>>,
    identities: IdentitiesClient<Channel>,
    storage: StorageClient<Channel>,
}

fn status_to_error(status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::NotFound => Error::NotFound {
            kind: "object",
            name: status.message().to_string(),
        },
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(status.message().to_string()),
        tonic::Code::ResourceExhausted => Error::InsufficientCapacity(status.message().to_string()),
        tonic::Code::InvalidArgument => Error::invalid("request", status.message().to_string()),
        _ => Error::Unavailable {
            message: status.message().to_string(),
            source: Some(Box::new(status)),
        },
    }
}

/// The cpu and memory a pod spec asks for.
pub fn requests(spec: &v1::PodSpec) -> (u64, u64) {
    let mut cpu = 0;
    let mut memory = 0;
    for c in &spec.containers {
        if let Some(r) = &c.resources {
            cpu += r
                .requests
                .get("cpu")
                .and_then(|q| Quantity::parse(q).ok()?.milli_value())
                .unwrap_or(0);
            memory += r
                .requests
                .get("memory")
                .and_then(|q| Quantity::parse(q).ok()?.value())
                .unwrap_or(0);
        }
    }
    (cpu, memory)
}

fn node_selector(api: &v1::NodeSelector) -> NodeSelector {
    let mut ignored = Violations::new();
    NodeSelector::parse(
        "affinity",
        api.node_selector_terms.iter().map(|t| {
            t.match_expressions
                .iter()
                .map(|r| (r.key.as_str(), r.operator.as_str(), r.values.clone()))
                .collect()
        }),
        &mut ignored,
    )
}

/// The planner's view of a set.
pub fn set_view(set: &SetRecord, current_revision: &str, update_revision: &str) -> SetView {
    let spec = &set.spec;
    let retention = spec
        .persistent_volume_claim_retention_policy
        .clone()
        .unwrap_or_default();
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    SetView {
        replicas: spec.replicas.unwrap_or(1).max(0) as u32,
        start: spec.ordinals.as_ref().map(|o| o.start).unwrap_or(0).max(0) as u32,
        policy: if spec.pod_management_policy == "Parallel" {
            Policy::Parallel
        } else {
            Policy::OrderedReady
        },
        strategy: if strategy.r#type == "OnDelete" {
            Strategy::OnDelete
        } else {
            Strategy::RollingUpdate {
                partition: strategy
                    .rolling_update
                    .map(|r| r.partition.max(0) as u32)
                    .unwrap_or(0),
            }
        },
        min_ready: Duration::from_secs(spec.min_ready_seconds.max(0) as u64),
        delete_claims_when_scaled: retention.when_scaled == "Delete",
        delete_claims_when_deleted: retention.when_deleted == "Delete",
        deleting: set.deleting.is_some(),
        current_revision: current_revision.to_string(),
        update_revision: update_revision.to_string(),
    }
}

/// The planner's view of a pod in `world`.
pub fn pod_view(world: &World, pod: &PodRecord) -> PodView {
    let ns = &pod.meta.namespace;
    let status = world
        .pod_status
        .get(&(ns.clone(), pod.meta.name.clone()))
        .filter(|s| s.incarnation == pod.incarnation);
    let phase = match status.map(|s| s.phase.as_str()) {
        Some("Running") => Phase::Running,
        Some("Failed") => Phase::Failed,
        Some("Succeeded") => Phase::Succeeded,
        _ => Phase::Pending,
    };
    let identity_held = world
        .holders
        .get(&(ns.clone(), pod.set_name.clone(), pod.ordinal))
        .is_some_and(|h| h.incarnation == pod.incarnation);
    PodView {
        name: pod.meta.name.clone(),
        ordinal: pod.ordinal,
        revision: pod.revision.clone(),
        phase,
        ready_since: status.filter(|s| s.ready).and_then(|s| s.ready_since),
        terminating: pod.deletion.is_some(),
        node_ready: world.node_ready(&pod.node),
        identity_held,
    }
}

impl Controller {
    /// A controller over `store`, calling identity-svc and storage-svc on
    /// these channels.
    pub fn new(store: Store, identity: Channel, storage: Channel, fence_margin: Duration) -> Self {
        Controller {
            store,
            backoff: Arc::default(),
            fence_margin,
            unheld: Arc::default(),
            identities: IdentitiesClient::new(identity),
            storage: StorageClient::new(storage),
        }
    }

    /// Reconciles until `token` is cancelled.
    pub async fn run(&self, term: Term, token: CancellationToken) {
        let prefix = format!("{}/", self.store.root());
        let mut client = self.store.client();
        let watch = client
            .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
            .await;
        let mut events = match watch {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the store; reconciling every second");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            match self.reconcile(&term).await {
                Err(e) if e.is_deposed() => {
                    tracing::warn!(error = %e, "deposed");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
                Ok(_) => {}
            }
            // A set whose back-off ends before the next tick is tried then.
            let wake = self.next_wake();
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
                _ = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => {}
                message = async {
                    match events.as_mut() {
                        Some(stream) => stream.message().await.ok().flatten().is_some(),
                        None => std::future::pending().await,
                    }
                } => {
                    if !message {
                        events = None;
                    }
                }
            }
        }
    }

    /// How much of the fence margin is left for a pod whose identity was
    /// freed by a lease expiry (counted from the first time this replica
    /// saw it freed); `None` once it has passed.
    fn margin_left(&self, freed: &FreedPod) -> Option<Duration> {
        let now = Instant::now();
        let mut unheld = self.unheld.lock().expect("not poisoned");
        // Forget pods long gone some other way.
        unheld.retain(|_, seen| now.duration_since(*seen) < Duration::from_secs(600));
        let seen = *unheld.entry(freed.clone()).or_insert(now);
        self.fence_margin
            .checked_sub(now.duration_since(seen))
            .filter(|d| !d.is_zero())
    }

    /// When the next set's back-off ends, if any waits.
    pub fn next_wake(&self) -> Option<Instant> {
        self.backoff.lock().expect("not poisoned").next_wake()
    }

    /// One activation over every set. Answers how many actions were taken.
    ///
    /// A set whose last activation was postponed (an action that cannot be
    /// done now, or a failure) waits out its back-off before it is tried
    /// again, unless its own record changed: a claim that cannot bind is
    /// retried after 250 ms, then twice as long each time up to 10 s, not
    /// on every change anywhere in the store. The reason is logged when it
    /// changes, not on every try.
    pub async fn reconcile(&self, term: &Term) -> Result<usize> {
        let world = World::read(&self.store).await?;
        let mut taken = 0;
        let now = Instant::now();
        let nodes_epoch = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            world.node_leases.hash(&mut h);
            h.finish()
        };
        for ((ns, name), set) in &world.sets {
            let key = (ns.clone(), name.clone());
            let version = (set.mod_revision, nodes_epoch);
            if self
                .backoff
                .lock()
                .expect("not poisoned")
                .waiting(&key, version, now)
            {
                continue;
            }
            let outcome = match sets::check_replicas(set.value.spec.replicas.unwrap_or(1)) {
                // Stored before the bound existed: left alone, not planned.
                Err(rule) => Err(Error::invalid("stateful_set.spec.replicas", rule)),
                Ok(()) => self.reconcile_set(term, &world, ns, name, set).await,
            };
            let blocked = match outcome {
                Ok((n, blocked)) => {
                    taken += n;
                    blocked
                }
                Err(e) if e.is_deposed() => return Err(e),
                Err(e) => Some(e.to_string()),
            };
            let mut backoff = self.backoff.lock().expect("not poisoned");
            match blocked {
                Some(reason) => {
                    if let Some(delay) = backoff.postponed(key, version, &reason, now) {
                        tracing::info!(set = %format!("{ns}/{name}"), %reason, retry_in = ?delay, "set postponed");
                    }
                }
                None => backoff.done(&key),
            }
        }
        Ok(taken)
    }

    async fn reconcile_set(
        &self,
        term: &Term,
        world: &World,
        ns: &str,
        name: &str,
        set: &Versioned<SetRecord>,
    ) -> Result<(usize, Option<String>)> {
        let keys = Keys(&self.store);
        let key = (ns.to_string(), name.to_string());
        let template = set.value.spec.template.clone().unwrap_or_default();
        let update_revision = revisions::revision_name(name, &template);
        let stored = world.revisions.get(&key).cloned().unwrap_or_default();
        if set.value.deleting.is_none() {
            self.record_revision(
                term,
                ns,
                name,
                &update_revision,
                &template,
                &stored,
                world,
                set,
            )
            .await?;
        }
        let status = world.statuses.get(&key);
        let current_revision = status
            .map(|s| s.value.current_revision.clone())
            .filter(|r| {
                !r.is_empty()
                    && (stored.iter().any(|s| s.value.name == *r) || *r == update_revision)
            })
            .unwrap_or_else(|| update_revision.clone());
        let view = set_view(&set.value, &current_revision, &update_revision);
        let pods: Vec<&Versioned<PodRecord>> = world.pods_of(ns, name).collect();
        let views: Vec<PodView> = pods.iter().map(|p| pod_view(world, &p.value)).collect();
        let claim_ordinals = if view.delete_claims_when_scaled || view.delete_claims_when_deleted {
            self.claim_ordinals(ns, name, &set.value).await?
        } else {
            BTreeSet::new()
        };
        let now = SystemTime::now();
        let actions = planner::plan(&view, &views, &claim_ordinals, now);
        let mut blocked = None;
        let mut taken = 0;
        for action in &actions {
            tracing::debug!(set = %format!("{ns}/{name}"), ?action, "acting");
            let outcome = match action {
                Action::CreatePod { ordinal, revision } => {
                    self.create_pod(
                        term,
                        world,
                        set,
                        *ordinal,
                        revision,
                        &stored,
                        &template,
                        &update_revision,
                    )
                    .await
                }
                Action::DeletePod { name: pod, reason } => {
                    let p = pods
                        .iter()
                        .find(|p| p.value.meta.name == *pod)
                        .expect("planned from these pods");
                    let mut record = p.value.clone();
                    record.deletion = Some(Deletion {
                        requested_at: now,
                        grace_seconds: record.spec.termination_grace_period_seconds.unwrap_or(30),
                        reason: format!("{reason:?}"),
                    });
                    let k = keys.pod(ns, pod);
                    term.write(
                        &self.store,
                        vec![Compare::mod_revision(k.clone(), CompareOp::Equal, p.mod_revision)],
                        vec![TxnOp::put(k, encode(&record)?, None)],
                    )
                    .await
                    .map(|done| {
                        if done {
                            tracing::info!(pod = %format!("{ns}/{pod}"), ?reason, "pod deletion asked for");
                        }
                    })
                }
                Action::RemovePod { name: pod, reason } => {
                    let p = pods
                        .iter()
                        .find(|p| p.value.meta.name == *pod)
                        .expect("planned from these pods");
                    let k = keys.pod(ns, pod);
                    let freed = (ns.to_string(), pod.clone(), p.value.incarnation);
                    if matches!(
                        reason,
                        planner::Reason::NodeLost | planner::Reason::IdentityLost
                    ) && let Some(left) = self.margin_left(&freed)
                    {
                        // The old copy's fence fired at two thirds of the
                        // lease; this covers clocks that run at other rates.
                        Err(Error::FailedPrecondition(format!(
                            "pod {pod}'s identity was freed by its node's lease expiry; \
                             replacing it in {left:?} (fence margin {:?})",
                            self.fence_margin
                        )))
                    } else {
                        term.write(
                            &self.store,
                            vec![Compare::mod_revision(k.clone(), CompareOp::Equal, p.mod_revision)],
                            vec![TxnOp::delete(k, None), TxnOp::delete(keys.pod_status(ns, pod), None)],
                        )
                        .await
                        .map(|done| {
                            if done {
                                self.unheld.lock().expect("not poisoned").remove(&freed);
                                metrics::counter!("petset_pods_removed_total", "reason" => format!("{reason:?}")).increment(1);
                                tracing::info!(pod = %format!("{ns}/{pod}"), ?reason, "pod removed");
                            }
                        })
                    }
                }
                Action::DeleteClaims { ordinal } => {
                    self.delete_claims(ns, name, &set.value, *ordinal).await
                }
                Action::RemoveSet => {
                    let set_key = keys.set(ns, name);
                    term.write(
                        &self.store,
                        vec![Compare::mod_revision(
                            set_key.clone(),
                            CompareOp::Equal,
                            set.mod_revision,
                        )],
                        vec![
                            TxnOp::delete(set_key, None),
                            TxnOp::delete(keys.status(ns, name), None),
                            TxnOp::delete(
                                keys.revisions(ns, name),
                                Some(DeleteOptions::new().with_prefix()),
                            ),
                        ],
                    )
                    .await
                    .map(|done| {
                        if done {
                            tracing::info!(set = %format!("{ns}/{name}"), "statefulset deleted");
                        }
                    })
                }
            };
            match outcome {
                Ok(()) => taken += 1,
                Err(e) if e.is_deposed() => return Err(e),
                Err(e) => {
                    tracing::debug!(set = %format!("{ns}/{name}"), ?action, error = %e, "action postponed");
                    blocked = Some(e.to_string());
                    break;
                }
            }
        }
        if !matches!(actions.last(), Some(Action::RemoveSet)) || blocked.is_some() {
            self.write_status(term, world, ns, name, set, &view, &views, blocked.clone())
                .await?;
        }
        Ok((taken, blocked))
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_revision(
        &self,
        term: &Term,
        ns: &str,
        name: &str,
        update_revision: &str,
        template: &v1::PodTemplateSpec,
        stored: &[Versioned<RevisionRecord>],
        world: &World,
        set: &Versioned<SetRecord>,
    ) -> Result<()> {
        let keys = Keys(&self.store);
        let newest = stored.last().map(|r| r.value.revision).unwrap_or(0);
        let existing = stored.iter().find(|r| r.value.name == update_revision);
        if existing.is_some_and(|r| r.value.revision == newest) {
            return self
                .truncate_history(term, ns, name, stored, world, set, update_revision)
                .await;
        }
        let record = RevisionRecord {
            name: update_revision.to_string(),
            revision: newest + 1,
            template: template.clone(),
            created: existing
                .map(|e| e.value.created)
                .unwrap_or_else(SystemTime::now),
        };
        let k = keys.revision(ns, name, update_revision);
        let expected = existing.map(|e| e.mod_revision).unwrap_or(0);
        term.write(
            &self.store,
            vec![Compare::mod_revision(k.clone(), CompareOp::Equal, expected)],
            vec![TxnOp::put(k, encode(&record)?, None)],
        )
        .await?;
        tracing::info!(set = %format!("{ns}/{name}"), revision = update_revision, number = record.revision, "revision recorded");
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn truncate_history(
        &self,
        term: &Term,
        ns: &str,
        name: &str,
        stored: &[Versioned<RevisionRecord>],
        world: &World,
        set: &Versioned<SetRecord>,
        update_revision: &str,
    ) -> Result<()> {
        let limit = set.value.spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let current = world
            .statuses
            .get(&(ns.to_string(), name.to_string()))
            .map(|s| s.value.current_revision.clone())
            .unwrap_or_default();
        let live: BTreeSet<String> = world
            .pods_of(ns, name)
            .map(|p| p.value.revision.clone())
            .chain([current, update_revision.to_string()])
            .collect();
        let history: Vec<&Versioned<RevisionRecord>> = stored
            .iter()
            .filter(|r| !live.contains(&r.value.name))
            .collect();
        if history.len() <= limit {
            return Ok(());
        }
        let keys = Keys(&self.store);
        for old in &history[..history.len() - limit] {
            let k = keys.revision(ns, name, &old.value.name);
            term.write(
                &self.store,
                vec![Compare::mod_revision(
                    k.clone(),
                    CompareOp::Equal,
                    old.mod_revision,
                )],
                vec![TxnOp::delete(k, None)],
            )
            .await?;
        }
        Ok(())
    }

    async fn claim_ordinals(&self, ns: &str, name: &str, set: &SetRecord) -> Result<BTreeSet<u32>> {
        let templates: Vec<String> = set
            .spec
            .volume_claim_templates
            .iter()
            .filter_map(|t| t.metadata.as_ref().map(|m| m.name.clone()))
            .collect();
        if templates.is_empty() {
            return Ok(BTreeSet::new());
        }
        let claims = self
            .storage
            .clone()
            .list_claims(v1::ListClaimsRequest {
                namespace: ns.to_string(),
                label_selector: [(CLAIM_SET_LABEL.to_string(), name.to_string())].into(),
            })
            .await
            .map_err(status_to_error)?
            .into_inner()
            .claims;
        Ok(claims
            .iter()
            .filter_map(|c| {
                let meta = c.metadata.as_ref()?;
                let ordinal: u32 = meta.labels.get(POD_INDEX_LABEL)?.parse().ok()?;
                let pod = pod_name(name, ordinal);
                templates
                    .iter()
                    .any(|t| meta.name == format!("{t}-{pod}"))
                    .then_some(ordinal)
            })
            .collect())
    }

    async fn delete_claims(
        &self,
        ns: &str,
        name: &str,
        set: &SetRecord,
        ordinal: u32,
    ) -> Result<()> {
        for template in &set.spec.volume_claim_templates {
            let Some(meta) = &template.metadata else {
                continue;
            };
            let claim = format!("{}-{}", meta.name, pod_name(name, ordinal));
            match self
                .storage
                .clone()
                .delete_claim(v1::DeleteClaimRequest {
                    namespace: ns.to_string(),
                    name: claim.clone(),
                })
                .await
            {
                Ok(_) => {
                    tracing::info!(claim = %format!("{ns}/{claim}"), "claim deleted (retention policy Delete)")
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(status_to_error(s)),
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_pod(
        &self,
        term: &Term,
        world: &World,
        set: &Versioned<SetRecord>,
        ordinal: u32,
        revision: &str,
        stored: &[Versioned<RevisionRecord>],
        update_template: &v1::PodTemplateSpec,
        update_revision: &str,
    ) -> Result<()> {
        let ns = set.value.meta.namespace.as_str();
        let set_name = set.value.meta.name.as_str();
        let spec = &set.value.spec;
        let template = if revision == update_revision {
            update_template.clone()
        } else {
            stored
                .iter()
                .find(|r| r.value.name == revision)
                .map(|r| r.value.template.clone())
                .unwrap_or_else(|| update_template.clone())
        };
        let name = pod_name(set_name, ordinal);
        let ensure = |node: &str| v1::EnsureClaimsRequest {
            namespace: ns.to_string(),
            set_name: set_name.to_string(),
            ordinal: ordinal.into(),
            templates: spec.volume_claim_templates.clone(),
            selector_labels: spec.selector.clone().unwrap_or_default().match_labels,
            node: node.to_string(),
        };
        let mut storage = self.storage.clone();
        let mut bindings = Vec::new();
        if !spec.volume_claim_templates.is_empty() {
            bindings = storage
                .ensure_claims(ensure(""))
                .await
                .map_err(status_to_error)?
                .into_inner()
                .bindings;
        }
        let pod_spec = template.spec.clone().unwrap_or_default();
        let (cpu_milli, memory_bytes) = requests(&pod_spec);
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
                .map(node_selector)
                .collect(),
        };
        let nodes: Vec<NodeView> = world
            .nodes
            .values()
            .map(|n| {
                let mut labels = n.labels.clone();
                labels.insert(petset_core::selector::HOSTNAME_LABEL.into(), n.name.clone());
                NodeView {
                    name: n.name.clone(),
                    ready: world.node_ready(&n.name),
                    labels,
                    pods: n.capacity.pods,
                    cpu_milli: n.capacity.cpu_milli,
                    memory_bytes: n.capacity.memory_bytes,
                }
            })
            .collect();
        let bound: Vec<Bound> = world
            .pods
            .values()
            .map(|p| {
                let (cpu_milli, memory_bytes) = requests(&p.value.spec);
                Bound {
                    node: p.value.node.clone(),
                    same_set: p.value.set_name == set_name && p.value.meta.namespace == ns,
                    cpu_milli,
                    memory_bytes,
                }
            })
            .collect();
        let node = placement::choose(&request, &nodes, &bound).map_err(|why| {
            Error::FailedPrecondition(format!("pod {ns}/{name} is unschedulable: {why}"))
        })?;
        if bindings.iter().any(|b| b.volume.is_none()) {
            bindings = storage
                .ensure_claims(ensure(&node))
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
        let lease = *world
            .node_leases
            .get(&node)
            .ok_or_else(|| Error::FailedPrecondition(format!("node {node} lost its lease")))?;
        let meta = MetaInput {
            namespace: ns.to_string(),
            name: name.clone(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            resource_version: None,
        }
        .create();
        let holder = format!("{node}/{}", meta.uid);
        let incarnation = self
            .issue(
                world,
                ns,
                set_name,
                ordinal,
                &spec.service_name,
                &holder,
                lease,
            )
            .await?;
        let mut labels: BTreeMap<String, String> = template
            .metadata
            .as_ref()
            .map(|m| m.labels.clone().into_iter().collect())
            .unwrap_or_default();
        labels.insert(POD_NAME_LABEL.into(), name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
        labels.insert(REVISION_LABEL.into(), revision.to_string());
        let mut pod_spec = pod_spec;
        pod_spec.hostname = name.clone();
        pod_spec.subdomain = spec.service_name.clone();
        for t in &spec.volume_claim_templates {
            let Some(tm) = &t.metadata else { continue };
            pod_spec.volumes.push(v1::Volume {
                name: tm.name.clone(),
                persistent_volume_claim: Some(v1::PersistentVolumeClaimVolumeSource {
                    claim_name: format!("{}-{name}", tm.name),
                    read_only: false,
                }),
                empty_dir: None,
            });
        }
        let record = PodRecord {
            meta: petset_core::meta::Meta {
                labels,
                annotations: template
                    .metadata
                    .as_ref()
                    .map(|m| m.annotations.clone().into_iter().collect())
                    .unwrap_or_default(),
                ..meta
            },
            set_name: set_name.to_string(),
            ordinal,
            node: node.clone(),
            incarnation,
            revision: revision.to_string(),
            spec: pod_spec,
            deletion: None,
        };
        let k = Keys(&self.store).pod(ns, &name);
        let written = term
            .write(
                &self.store,
                vec![Compare::create_revision(k.clone(), CompareOp::Equal, 0)],
                vec![TxnOp::put(k, encode(&record)?, None)],
            )
            .await;
        if !matches!(written, Ok(true)) {
            // Nobody will run this pod: give the identity back at once.
            let _ = self
                .identities
                .clone()
                .release_identity(v1::ReleaseIdentityRequest {
                    r#ref: Some(v1::IdentityRef {
                        namespace: ns.into(),
                        set_name: set_name.into(),
                        ordinal: ordinal.into(),
                    }),
                    incarnation,
                })
                .await;
            written?;
            return Err(Error::Conflict(format!("pod {ns}/{name} exists already")));
        }
        metrics::counter!("petset_pods_created_total").increment(1);
        tracing::info!(pod = %format!("{ns}/{name}"), node = %node, incarnation, revision, "pod created");
        Ok(())
    }

    /// Issues the pod's identity; an identity held by a pod that no longer
    /// exists (a leader died between issuing and writing the pod) is
    /// released first.
    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        world: &World,
        ns: &str,
        set: &str,
        ordinal: u32,
        service: &str,
        holder: &str,
        lease: i64,
    ) -> Result<u64> {
        let reference = v1::IdentityRef {
            namespace: ns.into(),
            set_name: set.into(),
            ordinal: ordinal.into(),
        };
        let request = v1::IssueIdentityRequest {
            r#ref: Some(reference.clone()),
            service_name: service.into(),
            holder: holder.into(),
            lease_id: lease,
        };
        let mut identities = self.identities.clone();
        match identities.issue_identity(request.clone()).await {
            Ok(identity) => {
                return Ok(identity
                    .into_inner()
                    .holder
                    .map(|h| h.incarnation)
                    .unwrap_or_default());
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
            Err(s) => return Err(status_to_error(s)),
        }
        let orphan = world
            .holders
            .get(&(ns.to_string(), set.to_string(), ordinal))
            .filter(|h| {
                let uid = h.holder.rsplit('/').next().unwrap_or_default();
                !world.pods.values().any(|p| p.value.meta.uid == uid)
            });
        let Some(orphan) = orphan else {
            return Err(Error::FailedPrecondition(format!(
                "identity {ns}/{} is still held; the pod is placed again once it is released or its holder's lease expires",
                pod_name(set, ordinal)
            )));
        };
        tracing::warn!(identity = %format!("{ns}/{}", pod_name(set, ordinal)), holder = %orphan.holder, "releasing an identity no pod holds");
        identities
            .release_identity(v1::ReleaseIdentityRequest {
                r#ref: Some(reference),
                incarnation: orphan.incarnation,
            })
            .await
            .map_err(status_to_error)?;
        let identity = identities
            .issue_identity(request)
            .await
            .map_err(status_to_error)?;
        Ok(identity
            .into_inner()
            .holder
            .map(|h| h.incarnation)
            .unwrap_or_default())
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_status(
        &self,
        term: &Term,
        world: &World,
        ns: &str,
        name: &str,
        set: &Versioned<SetRecord>,
        view: &SetView,
        pods: &[PodView],
        blocked: Option<String>,
    ) -> Result<()> {
        let (counts, current_revision) = planner::status(view, pods, SystemTime::now());
        let status = SetStatusRecord {
            observed_generation: set.value.meta.generation,
            replicas: counts.replicas,
            ready_replicas: counts.ready,
            available_replicas: counts.available,
            current_replicas: counts.current,
            updated_replicas: counts.updated,
            current_revision,
            update_revision: view.update_revision.clone(),
            blocked,
        };
        let key = (ns.to_string(), name.to_string());
        let existing = world.statuses.get(&key);
        if existing.is_some_and(|e| e.value == status) {
            return Ok(());
        }
        let k = Keys(&self.store).status(ns, name);
        term.write(
            &self.store,
            vec![Compare::mod_revision(
                k.clone(),
                CompareOp::Equal,
                existing.map(|e| e.mod_revision).unwrap_or(0),
            )],
            vec![TxnOp::put(k, encode(&status)?, None)],
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    fn set(name: &str) -> Name {
        ("default".into(), name.into())
    }

    #[test]
    fn a_repeated_postponement_doubles_its_wait_up_to_the_cap_and_is_logged_once() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(
            b.postponed(set("a"), (7, 0), "claim pending", t0),
            Some(BACKOFF_FIRST)
        );
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            assert!(b.waiting(&set("a"), (7, 0), now));
            let until = b.sets[&set("a")].until;
            now = until;
            assert!(
                !b.waiting(&set("a"), (7, 0), now),
                "tried again once the wait is over"
            );
            assert_eq!(
                b.postponed(set("a"), (7, 0), "claim pending", now),
                None,
                "logged once"
            );
            waits.push(b.sets[&set("a")].delay);
        }
        assert_eq!(
            waits.iter().map(Duration::as_millis).collect::<Vec<_>>(),
            [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]
        );
        // Another set is not held back.
        assert!(!b.waiting(&set("b"), (7, 0), now));
    }

    #[test]
    fn a_new_reason_a_changed_set_or_a_success_starts_over() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        b.postponed(set("a"), (7, 0), "claim pending", t0);
        b.postponed(set("a"), (7, 0), "claim pending", t0);
        assert_eq!(
            b.postponed(set("a"), (7, 0), "node full", t0),
            Some(BACKOFF_FIRST)
        );
        assert!(b.waiting(&set("a"), (7, 0), t0));
        // The set's own record changed (a person edited it): tried at once.
        assert!(!b.waiting(&set("a"), (8, 0), t0));
        assert_eq!(
            b.postponed(set("a"), (8, 0), "node full", t0),
            Some(BACKOFF_FIRST)
        );
        // A node came or went: tried at once.
        assert!(!b.waiting(&set("a"), (8, 1), t0));
        b.done(&set("a"));
        assert!(!b.waiting(&set("a"), (8, 0), t0));
    }
}
