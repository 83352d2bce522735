//! The names and label keys petset gives the objects of a StatefulSet: one
//! home, so the scheduler that makes a pod and the storage service that
//! makes its claims cannot disagree.
//!
//! As Kubernetes' StatefulSet controller names them:
//! - pod `<set>-<ordinal>` ([`pod_name`]), which is also its hostname;
//! - claim `<template>-<set>-<ordinal>` ([`claim_name`]).

pub use crate::identity::pod_name;

/// The label every pod of a set carries: its own name (Kubernetes').
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label every pod, and every claim made from a template, carries: its
/// ordinal (Kubernetes' `apps.kubernetes.io/pod-index`).
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The label every pod carries: the revision of the template it was made
/// from (Kubernetes' `controller-revision-hash`).
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The label a claim made from a set's template carries: the set's name.
pub const SET_LABEL: &str = "petset.io/set";
/// The annotation petctl shows a pod's incarnation under.
pub const INCARNATION_ANNOTATION: &str = "petset.io/incarnation";

/// `<template>-<set>-<ordinal>`: the claim replica `ordinal` of `set` gets
/// from the claim template named `template`.
pub fn claim_name(template: &str, set_name: &str, ordinal: u32) -> String {
    format!("{template}-{}", pod_name(set_name, ordinal))
}

/// The ordinal of the claim `claim` if it was made from `template` for a
/// replica of `set_name` (the inverse of [`claim_name`]).
pub fn claim_ordinal(claim: &str, template: &str, set_name: &str) -> Option<u32> {
    let ordinal = claim
        .strip_prefix(template)?
        .strip_prefix('-')?
        .strip_prefix(set_name)?
        .strip_prefix('-')?;
    // `0` or a number without a leading zero, as pod_name writes it.
    if ordinal.len() > 1 && ordinal.starts_with('0') {
        return None;
    }
    ordinal.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_are_kubernetes_and_invert() {
        assert_eq!(claim_name("data", "web", 2), "data-web-2");
        assert_eq!(claim_ordinal("data-web-2", "data", "web"), Some(2));
        for ordinal in [0, 1, 9, 10, 4_294_967_295] {
            let name = claim_name("www", "web-a", ordinal);
            assert_eq!(claim_ordinal(&name, "www", "web-a"), Some(ordinal));
        }
        // Another set whose name extends this one's, or another template.
        assert_eq!(claim_ordinal("data-web-a-2", "data", "web"), None);
        assert_eq!(claim_ordinal("logs-web-2", "data", "web"), None);
        assert_eq!(claim_ordinal("data-web-02", "data", "web"), None);
        assert_eq!(claim_ordinal("data-web-", "data", "web"), None);
    }
}
