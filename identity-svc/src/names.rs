//! Stable identities, derived: replica `i` of set `web` is always the same
//! pod name, hostname, subdomain and FQDN. Nothing here touches etcd; the
//! same inputs give the same identity on every replica of identity-svc.

use petset_core::validate;

pub use petset_core::identity::{IdentityRef, MAX_ORDINAL, pod_name};

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
