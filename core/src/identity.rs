//! The identity fence every service checks: which holder may act for pod
//! `web-i` now, under which lease and incarnation.
//!
//! identity-svc issues identities; storage-svc (attachments), the scheduler
//! and the node agents' reports are only accepted for the current
//! incarnation. They read the same holder key and compare its revision in
//! the transaction that makes their change, so a holder that lost its
//! identity cannot act for it, whichever service it talks to.
//!
//! # Key layout (under the store root)
//! - `identities/<ns>/<set>/<ordinal>/holder`: the [`HolderRecord`], on the
//!   holder's lease: when the lease expires, etcd deletes it.
//! - `identities/<ns>/<set>/<ordinal>/incarnation`: the last incarnation
//!   issued; never deleted, so incarnations only grow.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Violations};
use crate::store::{Store, Versioned};
use crate::validate::{self, DNS1123_LABEL_MAX};

/// Highest ordinal: Kubernetes keeps ordinals in an `int32`.
pub const MAX_ORDINAL: i64 = i32::MAX as i64;

/// Names one identity: replica `ordinal` of `set_name` in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdentityRef {
    /// The namespace (never empty: empty becomes `default`).
    pub namespace: String,
    /// The StatefulSet's name.
    pub set_name: String,
    /// The replica number.
    pub ordinal: u32,
}

impl IdentityRef {
    /// Checks a reference from the API; every broken rule is named under
    /// `field` (e.g. `ref.ordinal`).
    pub fn parse(
        field: &str,
        namespace: &str,
        set_name: &str,
        ordinal: i64,
    ) -> Result<IdentityRef> {
        let at = |leaf: &str| {
            if field.is_empty() {
                leaf.to_string()
            } else {
                format!("{field}.{leaf}")
            }
        };
        let namespace = validate::namespace_or_default(namespace);
        let mut violations = Violations::new();
        violations.check(at("namespace"), validate::dns1123_label(&namespace));
        violations.check(at("set_name"), validate::dns1123_label(set_name));
        if !(0..=MAX_ORDINAL).contains(&ordinal) {
            violations.add(
                at("ordinal"),
                format!("must be between 0 and {MAX_ORDINAL}, got {ordinal}"),
            );
        } else {
            let pod = pod_name(set_name, ordinal as u32);
            if validate::dns1123_label(set_name).is_ok() && pod.len() > DNS1123_LABEL_MAX {
                violations.add(
                    at("set_name"),
                    format!(
                        "the pod name {pod:?} (set name, '-', ordinal) must be no more than {DNS1123_LABEL_MAX} \
                         characters to be a hostname; shorten the set name to at most {} characters",
                        DNS1123_LABEL_MAX - 1 - ordinal.to_string().len()
                    ),
                );
            }
        }
        violations.into_result()?;
        Ok(IdentityRef {
            namespace,
            set_name: set_name.to_string(),
            ordinal: ordinal as u32,
        })
    }

    /// `<set>-<ordinal>`.
    pub fn pod_name(&self) -> String {
        pod_name(&self.set_name, self.ordinal)
    }

    /// `identities/<ns>/<set>/<ordinal>/holder`.
    pub fn holder_key(&self, store: &Store) -> String {
        self.key(store, "holder")
    }

    /// `identities/<ns>/<set>/<ordinal>/incarnation`.
    pub fn incarnation_key(&self, store: &Store) -> String {
        self.key(store, "incarnation")
    }

    fn key(&self, store: &Store, leaf: &str) -> String {
        store.key(&[
            "identities",
            &self.namespace,
            &self.set_name,
            &self.ordinal.to_string(),
            leaf,
        ])
    }
}

impl std::fmt::Display for IdentityRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod_name())
    }
}

/// `<set>-<ordinal>`: the pod name, and its hostname.
pub fn pod_name(set_name: &str, ordinal: u32) -> String {
    format!("{set_name}-{ordinal}")
}

/// Who holds an identity now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    /// The holder's own name.
    pub holder: String,
    /// The lease the issue is tied to.
    pub lease_id: i64,
    /// The fencing token of this issue.
    pub incarnation: u64,
    /// The governing service (the pod's subdomain).
    pub service: String,
    /// When it was issued.
    pub issued_at: SystemTime,
}

/// Reads the holder of `r` and checks that `incarnation` is the current
/// one. The answer's `mod_revision` is what a fenced write compares on.
pub async fn current_holder(
    store: &Store,
    r: &IdentityRef,
    incarnation: u64,
) -> Result<Versioned<HolderRecord>> {
    held_by(
        r,
        store.get::<HolderRecord>(&r.holder_key(store)).await?,
        incarnation,
    )
}

/// `current` (the identity's holder key as read) if it is held by
/// `incarnation`; FAILED_PRECONDITION saying why not otherwise.
pub fn held_by(
    r: &IdentityRef,
    current: Option<Versioned<HolderRecord>>,
    incarnation: u64,
) -> Result<Versioned<HolderRecord>> {
    let Some(current) = current else {
        return Err(Error::FailedPrecondition(format!(
            "identity {r} is not held (released, or its holder's lease expired); incarnation {incarnation} \
             may no longer act for it: issue it again"
        )));
    };
    check_current(r, &current.value, incarnation)?;
    Ok(current)
}

/// Refuses `incarnation` unless it is `current`'s.
pub fn check_current(r: &IdentityRef, current: &HolderRecord, incarnation: u64) -> Result<()> {
    if current.incarnation != incarnation {
        return Err(Error::FailedPrecondition(format!(
            "stale incarnation {incarnation} for identity {r}: the current one is {} held by {:?}",
            current.incarnation, current.holder
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_references_name_each_field() {
        let err = IdentityRef::parse("ref", "Bad_NS", "web", -1).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ref.namespace"), "{text}");
        assert!(text.contains("ref.ordinal: must be between 0"), "{text}");
        let long = "a".repeat(62);
        let err = IdentityRef::parse("ref", "default", &long, 10)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ref.set_name") && err.contains("no more than 63"),
            "{err}"
        );
        assert!(IdentityRef::parse("ref", "default", &"a".repeat(61), 9).is_ok());
    }

    #[test]
    fn empty_namespace_is_default() {
        let r = IdentityRef::parse("ref", "", "kubia", 1).unwrap();
        assert_eq!(r.to_string(), "default/kubia-1");
    }
}
