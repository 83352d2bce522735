//! The executor: reads the world, asks the planner what to do for each set,
//! and carries it out through identity-svc, storage-svc and etcd writes
//! guarded by the leader's term. What a pod is, which revision is current
//! and which identity is an orphan are decided by pure functions
//! ([`crate::rules`], [`crate::revisions`], [`crate::planner`]); this
//! module only dispatches.
//!
//! # Layout
//! - this file: the [`Controller`], its activation loop and the fence
//!   margin;
//! - [`backoff`]: per-set back-off after a postponed activation;
//! - `set`: one set's pass (revisions, the plan's actions, status);
//! - `create`: creating a pod (claims, placement, identity, the write);
//! - `claims`: the set's claims in storage-svc (retention).
//!
//! # Expected flow (one activation)
//! 1. Bring the cached [`World`] up to date from the root's watch (at least
//!    to this leader's own last write) and take the sets the updates
//!    touched.
//! 2. For each of them: make sure its template's revision exists, plan, and
//!    run the actions in order, stopping at the first that cannot be done
//!    now.
//! 3. Write each set's status when it changed.
//!
//! Activations run when an update touches a set and every second, for
//! every set (for `minReadySeconds` and retries); a set whose last
//! activation was postponed waits out its [`Backoff`] first. Every action is
//! idempotent against the world: creating a pod that exists fails its
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

pub mod backoff;
mod claims;
mod create;
mod set;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use petset_core::error::{Error, Result};
use petset_core::serve::ServiceChannel;
use petset_core::shutdown::CancellationToken;
use petset_core::store::Store;
use petset_core::store::mirror::{Update, reflect};
use petset_proto::v1::identities_client::IdentitiesClient;
use petset_proto::v1::storage_client::StorageClient;

pub use self::backoff::Backoff;
use self::set::SetPass;
use crate::leader::Term;
use crate::placement::{self, Bound, Loads};
use crate::sets;
use crate::world::{Name, Touched, World};

/// `(namespace, pod, incarnation)` of a pod whose identity a lease expiry
/// freed.
type FreedPod = (String, String, u64);

/// How long a node's refusal of a pod keeps placement from choosing that
/// node for the pod again.
const REFUSAL_MEMORY: Duration = Duration::from_secs(30);

/// A pod this replica wrote, counted by placement until a world read shows
/// it (kube-scheduler's assume cache): the world a pass plans on was read
/// before the pass's own creates.
#[derive(Debug, Clone)]
struct Assumed {
    /// `(namespace, set)`.
    set: Name,
    node: String,
    cpu_milli: u64,
    memory_bytes: u64,
    /// The revision of the write that made it.
    written: i64,
}

/// Nodes that refused a pod lately: node → (reason, when).
type Refusals = BTreeMap<String, (String, Instant)>;

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
    /// Pods written that the world read may not show yet, by `(ns, pod)`.
    assumed: Arc<Mutex<BTreeMap<Name, Assumed>>>,
    /// Nodes that refused each `(ns, pod)` lately.
    refusals: Arc<Mutex<BTreeMap<Name, Refusals>>>,
    /// The revision of this leader's last write.
    written: Arc<AtomicI64>,
    identities: IdentitiesClient<ServiceChannel>,
    storage: StorageClient<ServiceChannel>,
}

/// The error a failed call to identity-svc or storage-svc stands for.
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

impl Controller {
    /// A controller over `store`, calling identity-svc and storage-svc on
    /// these channels.
    pub fn new(
        store: Store,
        identity: ServiceChannel,
        storage: ServiceChannel,
        fence_margin: Duration,
    ) -> Self {
        Controller {
            store,
            backoff: Arc::default(),
            fence_margin,
            unheld: Arc::default(),
            assumed: Arc::default(),
            refusals: Arc::default(),
            written: Arc::default(),
            identities: IdentitiesClient::new(identity),
            storage: StorageClient::new(storage),
        }
    }

    /// Reconciles until `token` is cancelled.
    ///
    /// The world is a cache fed by one watch of the root ([`reflect`]):
    /// each update touches some sets, and those are planned again, once
    /// for every batch of updates that arrived together (a work queue that
    /// coalesces). Every second, and when a back-off ends, every set is.
    /// A pass never plans on a world older than this leader's own last
    /// write: it waits for the watch to bring it.
    pub async fn run(&self, term: Term, token: CancellationToken) {
        let root = format!("{}/", self.store.root());
        let mut updates = reflect(&self.store, root.clone());
        let mut world = World::default();
        let mut listed = false;
        let mut touched = Touched::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => touched = Touched::all(),
                _ = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => touched = Touched::all(),
                update = updates.recv() => {
                    let Some(update) = update else { return };
                    listed |= matches!(update, Update::Listed { .. });
                    touched.merge(world.apply(&root, update));
                }
            }
            // Everything that arrived meanwhile goes into the same pass.
            while let Ok(update) = updates.try_recv() {
                listed |= matches!(update, Update::Listed { .. });
                touched.merge(world.apply(&root, update));
            }
            if !listed
                || world.revision < self.written.load(Ordering::Acquire)
                || touched.is_empty()
            {
                continue;
            }
            let due = std::mem::take(&mut touched);
            match self.reconcile(&term, &world, &due).await {
                Err(e) if e.is_deposed() => {
                    tracing::warn!(error = %e, "deposed");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
                Ok(_) => {}
            }
        }
    }

    /// Notes that this leader wrote at `revision`: no pass plans on a world
    /// older than that.
    pub(super) fn wrote(&self, revision: i64) {
        self.written.fetch_max(revision, Ordering::AcqRel);
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

    /// Forgets a freed pod once it was removed.
    fn forget_freed(&self, freed: &FreedPod) {
        self.unheld.lock().expect("not poisoned").remove(freed);
    }

    /// What each node holds as placement counts it for a pod of set `set`
    /// in `ns`: `loaded`, the load of `world`'s pods, and the pods written
    /// (or being written) since it was read.
    pub(super) fn placed(&self, world: &World, loaded: &Loads, ns: &str, set: &str) -> Loads {
        let mut loads = loaded.clone();
        let assumed = self.assumed.lock().expect("not poisoned");
        placement::add(
            &mut loads,
            assumed
                .iter()
                .filter(|(pod, a)| a.written > world.revision && !world.pods.contains_key(*pod))
                .map(|(_, a)| Bound {
                    node: a.node.clone(),
                    same_set: a.set.0 == ns && a.set.1 == set,
                    cpu_milli: a.cpu_milli,
                    memory_bytes: a.memory_bytes,
                }),
        );
        loads
    }

    /// Counts pod `pod` of `set` on `node` from revision `written` on,
    /// until a world read shows it.
    pub(super) fn assume(
        &self,
        pod: Name,
        set: Name,
        node: &str,
        (cpu_milli, memory_bytes): (u64, u64),
        written: i64,
    ) {
        self.assumed.lock().expect("not poisoned").insert(
            pod,
            Assumed {
                set,
                node: node.to_string(),
                cpu_milli,
                memory_bytes,
                written,
            },
        );
    }

    /// Forgets an assumed pod that was not written after all.
    pub(super) fn unassume(&self, pod: &Name) {
        self.assumed.lock().expect("not poisoned").remove(pod);
    }

    /// The nodes that refused pod `(ns, name)` within the last
    /// [`REFUSAL_MEMORY`], with their reasons.
    pub(super) fn refused_by(&self, pod: &Name) -> BTreeMap<String, String> {
        let now = Instant::now();
        let mut refusals = self.refusals.lock().expect("not poisoned");
        refusals.retain(|_, nodes| {
            nodes.retain(|_, (_, when)| now.duration_since(*when) < REFUSAL_MEMORY);
            !nodes.is_empty()
        });
        refusals
            .get(pod)
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|(node, (why, _))| (node.clone(), why.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Remembers that `node` refused pod `(ns, name)`.
    pub(super) fn remember_refusal(&self, pod: Name, node: &str, reason: &str) {
        self.refusals
            .lock()
            .expect("not poisoned")
            .entry(pod)
            .or_default()
            .insert(node.to_string(), (reason.to_string(), Instant::now()));
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
    pub async fn reconcile(&self, term: &Term, world: &World, touched: &Touched) -> Result<usize> {
        let started = Instant::now();
        self.assumed
            .lock()
            .expect("not poisoned")
            .retain(|_, a| a.written > world.revision);
        record_pods_by_phase(world);
        let mut taken = 0;
        let now = Instant::now();
        let nodes_epoch = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            world.node_leases.hash(&mut h);
            h.finish()
        };
        let (waiting, ready): (Vec<_>, Vec<_>) = {
            let backoff = self.backoff.lock().expect("not poisoned");
            world.sets.iter().partition(|((ns, name), set)| {
                let key = (ns.clone(), name.clone());
                backoff.waiting(&key, (set.mod_revision, nodes_epoch), now)
            })
        };
        let due: Vec<_> = ready
            .into_iter()
            .filter(|((ns, name), _)| touched.contains(&(ns.clone(), name.clone())))
            .collect();
        metrics::gauge!("petset_controller_queue_depth").set(due.len() as f64);
        metrics::gauge!("petset_controller_sets_backing_off").set(waiting.len() as f64);
        for ((ns, name), set) in due {
            let key = (ns.clone(), name.clone());
            let version = (set.mod_revision, nodes_epoch);
            let pass = Instant::now();
            let outcome = match sets::check_replicas(set.value.spec.replicas.unwrap_or(1)) {
                // Stored before the bound existed: left alone, not planned.
                Err(rule) => Err(Error::invalid("stateful_set.spec.replicas", rule)),
                Ok(()) => SetPass::new(self, term, world, set).run().await,
            };
            metrics::histogram!("petset_controller_set_pass_seconds")
                .record(pass.elapsed().as_secs_f64());
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
        metrics::histogram!("petset_controller_reconcile_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("petset_controller_actions_total").increment(taken as u64);
        Ok(taken)
    }
}

/// `petset_pods{phase}`: the pods of every set by the phase their current
/// incarnation reported (Pending until it reported).
fn record_pods_by_phase(world: &World) {
    let mut phases: std::collections::BTreeMap<&str, usize> =
        ["Pending", "Running", "Succeeded", "Failed"]
            .into_iter()
            .map(|p| (p, 0))
            .collect();
    for pod in world.pods.values() {
        let phase = match crate::rules::pod_view(world, &pod.value).phase {
            crate::planner::Phase::Pending => "Pending",
            crate::planner::Phase::Running => "Running",
            crate::planner::Phase::Succeeded => "Succeeded",
            crate::planner::Phase::Failed => "Failed",
        };
        *phases.entry(phase).or_default() += 1;
    }
    for (phase, count) in phases {
        metrics::gauge!("petset_pods", "phase" => phase).set(count as f64);
    }
}
