//! Stable identities, derived: replica `i` of set `web` is always the same
//! pod name, hostname, subdomain and FQDN. Nothing here touches etcd; the
//! same inputs give the same identity on every replica of identity-svc.

use petset_core::error::{Result, Violations};
use petset_core::validate::{self, DNS1123_LABEL_MAX};

/// Highest ordinal: Kubernetes keeps ordinals in an `int32`.
pub const MAX_ORDINAL: i64 = i32::MAX as i64;

/// Names one identity: replica `ordinal` of `set_name` in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
        let namespace = validate::namespace_or_default(namespace);
        let mut violations = Violations::new();
        violations.check(
            format!("{field}.namespace"),
            validate::dns1123_label(&namespace),
        );
        violations.check(
            format!("{field}.set_name"),
            validate::dns1123_label(set_name),
        );
        if !(0..=MAX_ORDINAL).contains(&ordinal) {
            violations.add(
                format!("{field}.ordinal"),
                format!("must be between 0 and {MAX_ORDINAL}, got {ordinal}"),
            );
        } else {
            let pod = pod_name(set_name, ordinal as u32);
            if validate::dns1123_label(set_name).is_ok() && pod.len() > DNS1123_LABEL_MAX {
                violations.add(
                    format!("{field}.set_name"),
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

/// The DNS zone petset answers for, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone(String);

impl Zone {
    /// Checks and keeps a zone name (a DNS-1123 subdomain, no trailing dot).
    pub fn new(zone: &str) -> std::result::Result<Zone, String> {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        validate::dns1123_subdomain(&zone)?;
        Ok(Zone(zone))
    }

    /// The zone without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<service>.<namespace>.svc.<zone>`.
    pub fn service_fqdn(&self, namespace: &str, service: &str) -> String {
        format!("{service}.{namespace}.svc.{}", self.0)
    }

    /// `<pod>.<service>.<namespace>.svc.<zone>`.
    pub fn pod_fqdn(&self, namespace: &str, service: &str, pod: &str) -> String {
        format!("{pod}.{}", self.service_fqdn(namespace, service))
    }
}

impl Default for Zone {
    fn default() -> Self {
        Zone("cluster.local".into())
    }
}

/// Everything that makes a pod the same pod after a reschedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedIdentity {
    /// `<set>-<ordinal>`.
    pub pod_name: String,
    /// Same as the pod name.
    pub hostname: String,
    /// The governing service.
    pub subdomain: String,
    /// `<pod>.<service>.<namespace>.svc.<zone>`.
    pub fqdn: String,
}

/// Derives the identity of `reference` governed by `service`.
pub fn derive(zone: &Zone, reference: &IdentityRef, service: &str) -> DerivedIdentity {
    let pod_name = reference.pod_name();
    DerivedIdentity {
        hostname: pod_name.clone(),
        subdomain: service.to_string(),
        fqdn: zone.pod_fqdn(&reference.namespace, service, &pod_name),
        pod_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_seed_identity() {
        let r = IdentityRef::parse("ref", "", "kubia", 0).unwrap();
        let id = derive(&Zone::default(), &r, "kubia");
        assert_eq!(id.pod_name, "kubia-0");
        assert_eq!(id.hostname, "kubia-0");
        assert_eq!(id.subdomain, "kubia");
        assert_eq!(id.fqdn, "kubia-0.kubia.default.svc.cluster.local");
    }

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

    proptest! {
        #[test]
        fn same_ordinal_same_identity(set in "[a-z][a-z0-9-]{0,20}[a-z0-9]", ordinal in 0u32..100_000) {
            let r = IdentityRef::parse("ref", "default", &set, ordinal.into()).unwrap();
            let a = derive(&Zone::default(), &r, "svc");
            let b = derive(&Zone::default(), &r.clone(), "svc");
            prop_assert_eq!(&a, &b);
            prop_assert!(validate::dns1123_label(&a.pod_name).is_ok());
            prop_assert_eq!(a.fqdn, format!("{set}-{ordinal}.svc.default.svc.cluster.local"));
        }
    }
}
