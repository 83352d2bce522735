//! Pods as a person and a node agent see them: read, deleted on request,
//! and their status reported by the node that runs them.
//!
//! # Guarantees
//! - A status report is written only for the pod's current incarnation: one
//!   transaction checks the identity's holder key is the one read (and holds
//!   that incarnation) and the pod is unchanged.
//! - A graceful deletion only marks the pod; the leader removes it once its
//!   node agent has stopped it and released its identity. A forced deletion
//!   removes it at once and releases its identity.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use petset_core::error::{Error, Result, Violations};
use petset_core::identity::{self, IdentityRef};
use petset_core::serve::ServiceChannel;
use petset_core::store::page::{Page, PageRequest};
use petset_core::store::{
    Compare, CompareOp, Store, Txn, TxnOp, Versioned, decode, decode_or_skip, encode,
};
use petset_core::validate;
use petset_proto::v1;
use petset_proto::v1::identities_client::IdentitiesClient;

use crate::records::{Deletion, Keys, PodRecord, PodStatusRecord};

/// A pod and its status (for its incarnation).
pub type PodWithStatus = (Versioned<PodRecord>, Option<PodStatusRecord>);

/// What a forced deletion costs, said to the person who asked.
pub const FORCE_WARNING: &str = "Immediate deletion does not wait for confirmation that the running pod has been \
     terminated: its node agent may keep running it until it notices, so for a while two pods may run with this \
     identity. Its storage and DNS stay fenced (only the newest incarnation can attach its volumes and publish its \
     address), but anything else it does is not.";

/// A pod's status from what its agent reported and the incarnation that
/// holds its identity: the report, when it is the pod's incarnation's and
/// that incarnation holds the identity; `Unknown` (not ready) once the
/// identity is no longer held by it (its node lost its lease, or it was
/// stopped), whatever it reported last.
fn status_from(
    pod: &PodRecord,
    reported: Option<PodStatusRecord>,
    holder: Option<u64>,
) -> Option<PodStatusRecord> {
    let reported = reported.filter(|s| s.incarnation == pod.incarnation);
    if holder == Some(pod.incarnation) {
        return reported;
    }
    Some(PodStatusRecord {
        incarnation: pod.incarnation,
        phase: "Unknown".into(),
        ready: false,
        pod_ip: reported
            .as_ref()
            .map(|r| r.pod_ip.clone())
            .unwrap_or_default(),
        restart_count: reported.as_ref().map(|r| r.restart_count).unwrap_or(0),
        message: format!(
            "incarnation {} no longer holds the pod's identity (its node {} lost its lease, or it was stopped); it is not running",
            pod.incarnation, pod.node
        ),
        reason: "NodeLost".into(),
        ready_since: None,
        last_termination_reason: reported
            .as_ref()
            .map(|r| r.last_termination_reason.clone())
            .unwrap_or_default(),
        start_time: reported.and_then(|r| r.start_time),
    })
}

/// Checks `namespace/name`.
pub fn parse_name(namespace: &str, name: &str) -> Result<String> {
    validate::namespaced_name(namespace, name, validate::dns1123_label)
}

/// The stored pods.
#[derive(Debug, Clone)]
pub struct Pods {
    store: Store,
    identities: IdentitiesClient<ServiceChannel>,
}

impl Pods {
    /// Pods kept in `store`; forced deletions release identities through
    /// `identity`.
    pub fn new(store: Store, identity: ServiceChannel) -> Self {
        Pods {
            store,
            identities: IdentitiesClient::new(identity),
        }
    }

    /// The pod, its reported status and its identity's holder key, all
    /// read in one round trip at one revision (the holder's key follows
    /// from the pod's name `<set>-<ordinal>`; checked against the record,
    /// and read again apart only if the two disagreed).
    async fn read_with_status(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<(
        Versioned<PodRecord>,
        Option<PodStatusRecord>,
        Option<Versioned<identity::HolderRecord>>,
    )> {
        let keys = Keys(&self.store);
        let guessed = name.rsplit_once('-').and_then(|(set, ordinal)| {
            Some(IdentityRef {
                namespace: ns.into(),
                set_name: set.into(),
                ordinal: ordinal.parse().ok()?,
            })
        });
        let mut wanted = vec![keys.pod(ns, name), keys.pod_status(ns, name)];
        wanted.extend(guessed.iter().map(|r| r.holder_key(&self.store)));
        let mut read = self.store.get_raw_many(&wanted).await?.into_iter();
        let Some(pod) = read.next().flatten() else {
            return Err(Error::NotFound {
                kind: "pod",
                name: format!("{ns}/{name}"),
            });
        };
        let pod: Versioned<PodRecord> = decode(&pod)?;
        let reported = read
            .next()
            .flatten()
            .and_then(|kv| decode_or_skip::<PodStatusRecord>(&kv))
            .map(|s| s.value);
        let reference = IdentityRef {
            namespace: ns.into(),
            set_name: pod.value.set_name.clone(),
            ordinal: pod.value.ordinal,
        };
        let holder = if guessed.as_ref() == Some(&reference) {
            read.next()
                .flatten()
                .and_then(|kv| decode_or_skip::<identity::HolderRecord>(&kv))
        } else {
            self.store.get(&reference.holder_key(&self.store)).await?
        };
        Ok((pod, reported, holder))
    }

    /// Reads one pod, with its status: the one reported for its
    /// incarnation; `Unknown` (not ready) once its identity is no longer
    /// held by that incarnation (its node lost its lease or it was
    /// stopped), whatever it reported last.
    pub async fn get(&self, ns: &str, name: &str) -> Result<PodWithStatus> {
        let (pod, reported, holder) = self.read_with_status(ns, name).await?;
        let status = status_from(&pod.value, reported, holder.map(|h| h.value.incarnation));
        Ok((pod, status))
    }

    /// Pods of a namespace (all when `None`), of one set and/or one node
    /// when given.
    pub async fn list(
        &self,
        ns: Option<&str>,
        set: Option<&str>,
        node: Option<&str>,
        page: &PageRequest,
    ) -> Result<(Vec<PodWithStatus>, Page)> {
        // Three range reads, joined here: not two reads more per pod. A
        // page joins only the statuses and holders of its own pods, read at
        // its revision.
        let keys = Keys(&self.store);
        let mut read = self.store.list_page(&keys.pods(ns), page).await?;
        let pods: Vec<Versioned<PodRecord>> = read
            .kvs
            .iter()
            .filter_map(decode_or_skip::<PodRecord>)
            .filter(|pod| {
                set.is_none_or(|s| s == pod.value.set_name)
                    && node.is_none_or(|n| n == pod.value.node)
            })
            .collect();
        // The caller needs only the page's revision and continue token.
        read.kvs = Vec::new();
        let under = |kind: &str| match ns {
            Some(ns) => self.store.prefix(&[kind, ns]),
            None => self.store.prefix(&[kind]),
        };
        let statuses = self
            .store
            .beside(
                page,
                &read,
                &under("podstatus"),
                pods.iter()
                    .map(|p| keys.pod_status(&p.value.meta.namespace, &p.value.meta.name)),
            )
            .await?;
        let holders = self
            .store
            .beside(
                page,
                &read,
                &under("identities"),
                pods.iter().map(|p| {
                    IdentityRef {
                        namespace: p.value.meta.namespace.clone(),
                        set_name: p.value.set_name.clone(),
                        ordinal: p.value.ordinal,
                    }
                    .holder_key(&self.store)
                }),
            )
            .await?;
        let root = format!("{}/", self.store.root());
        let mut statuses: BTreeMap<(String, String), PodStatusRecord> = statuses
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let (ns, name) = key
                    .get(root.len()..)?
                    .strip_prefix("podstatus/")?
                    .split_once('/')?;
                let status = decode_or_skip::<PodStatusRecord>(kv)?;
                Some(((ns.to_string(), name.to_string()), status.value))
            })
            .collect();
        let holders: BTreeMap<(String, String, u32), u64> = holders
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let parts: Vec<&str> = key.get(root.len()..)?.split('/').collect();
                let ["identities", ns, set, ordinal, "holder"] = parts.as_slice() else {
                    return None;
                };
                let holder = decode_or_skip::<identity::HolderRecord>(kv)?;
                Some((
                    (ns.to_string(), set.to_string(), ordinal.parse().ok()?),
                    holder.value.incarnation,
                ))
            })
            .collect();
        let pods = pods
            .into_iter()
            .map(|pod| {
                let p = &pod.value;
                let reported = statuses.remove(&(p.meta.namespace.clone(), p.meta.name.clone()));
                let holder = holders
                    .get(&(p.meta.namespace.clone(), p.set_name.clone(), p.ordinal))
                    .copied();
                let status = status_from(p, reported, holder);
                (pod, status)
            })
            .collect();
        Ok((pods, read))
    }

    /// Deletes a pod; see the module's guarantees.
    pub async fn delete(
        &self,
        ns: &str,
        name: &str,
        force: bool,
        grace: Option<i64>,
    ) -> Result<Option<PodWithStatus>> {
        if let Some(g) = grace
            && g < 0
        {
            return Err(Error::invalid(
                "grace_period_seconds",
                format!("must be 0 or more, got {g}"),
            ));
        }
        let keys = Keys(&self.store);
        let (pod, status) = self.get(ns, name).await?;
        let key = keys.pod(ns, name);
        if force {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    pod.mod_revision,
                )])
                .and_then([
                    TxnOp::delete(key, None),
                    TxnOp::delete(keys.pod_status(ns, name), None),
                ]);
            if !self.store.txn(txn).await?.succeeded() {
                return Err(Error::Conflict(format!(
                    "pod {ns}/{name} changed while being deleted; retry"
                )));
            }
            let reference = v1::IdentityRef {
                namespace: ns.into(),
                set_name: pod.value.set_name.clone(),
                ordinal: pod.value.ordinal.into(),
            };
            if let Err(status) = self
                .identities
                .clone()
                .release_identity(v1::ReleaseIdentityRequest {
                    r#ref: Some(reference),
                    incarnation: pod.value.incarnation,
                })
                .await
            {
                tracing::warn!(pod = %format!("{ns}/{name}"), %status, "identity not released after forced deletion");
            }
            tracing::warn!(pod = %format!("{ns}/{name}"), "pod deleted by force");
            return Ok(None);
        }
        let mut record = pod.value.clone();
        let grace_seconds =
            grace.unwrap_or(record.spec.termination_grace_period_seconds.unwrap_or(30));
        match &mut record.deletion {
            Some(d) if d.grace_seconds <= grace_seconds => return Ok(Some((pod, status))),
            Some(d) => d.grace_seconds = grace_seconds,
            None => {
                record.deletion = Some(Deletion {
                    requested_at: SystemTime::now(),
                    grace_seconds,
                    reason: "user".into(),
                });
            }
        }
        let written = self
            .store
            .put_over(&key, record, Some(&pod))
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "pod {ns}/{name} changed while being deleted; retry"
                ))
            })?;
        tracing::info!(pod = %format!("{ns}/{name}"), grace_seconds, "pod deletion asked for");
        Ok(Some((written, status)))
    }

    /// Records a node agent's report; see the module's guarantees.
    pub async fn report(
        &self,
        ns: &str,
        name: &str,
        incarnation: u64,
        status: &v1::PodStatus,
    ) -> Result<PodWithStatus> {
        let mut v = Violations::new();
        if !matches!(
            status.phase.as_str(),
            "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown"
        ) {
            v.add(
                "status.phase",
                format!(
                    "must be Pending, Running, Succeeded, Failed or Unknown, got {:?}",
                    status.phase
                ),
            );
        }
        if !status.pod_ip.is_empty() && status.pod_ip.parse::<IpAddr>().is_err() {
            v.add(
                "status.pod_ip",
                format!("must be an IP address, got {:?}", status.pod_ip),
            );
        }
        if status.restart_count < 0 {
            v.add("status.restart_count", "must be 0 or more");
        }
        if incarnation == 0 {
            v.add("incarnation", "is required: the pod's incarnation");
        }
        v.into_result()?;
        let keys = Keys(&self.store);
        // One read (pod, status, holder), then the guarded write.
        let (pod, reported, holder) = self.read_with_status(ns, name).await?;
        let previous = status_from(
            &pod.value,
            reported,
            holder.as_ref().map(|h| h.value.incarnation),
        );
        if pod.value.incarnation != incarnation {
            return Err(Error::FailedPrecondition(format!(
                "stale incarnation {incarnation} for pod {ns}/{name}: the pod runs as incarnation {}",
                pod.value.incarnation
            )));
        }
        let reference = IdentityRef {
            namespace: ns.into(),
            set_name: pod.value.set_name.clone(),
            ordinal: pod.value.ordinal,
        };
        let holder = identity::held_by(&reference, holder, incarnation)?;
        let now = SystemTime::now();
        let ready_since = match (&previous, status.ready) {
            (_, false) => None,
            (Some(p), true) if p.ready => p.ready_since,
            (_, true) => Some(now),
        };
        let start_time = previous
            .as_ref()
            .and_then(|p| p.start_time)
            .or_else(|| (status.phase == "Running").then_some(now));
        let record = PodStatusRecord {
            incarnation,
            phase: status.phase.clone(),
            ready: status.ready,
            pod_ip: status.pod_ip.clone(),
            restart_count: status.restart_count,
            message: status.message.clone(),
            reason: status.reason.clone(),
            ready_since,
            start_time,
            last_termination_reason: status.last_termination_reason.clone(),
        };
        if previous.as_ref() == Some(&record) {
            return Ok((pod, previous));
        }
        let pod_key = keys.pod(ns, name);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(
                    reference.holder_key(&self.store),
                    CompareOp::Equal,
                    holder.mod_revision,
                ),
                Compare::mod_revision(pod_key, CompareOp::Equal, pod.mod_revision),
            ])
            .and_then([TxnOp::put(
                keys.pod_status(ns, name),
                encode(&record)?,
                None,
            )]);
        if !self.store.txn(txn).await?.succeeded() {
            return Err(Error::Conflict(format!(
                "pod {ns}/{name} or its identity changed while reporting; report again"
            )));
        }
        Ok((pod, Some(record)))
    }
}
