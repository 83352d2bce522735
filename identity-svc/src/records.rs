//! What identity-svc keeps in etcd, and where.
//!
//! # Key layout (under the store root, `/petset` by default)
//! - `services/<ns>/<name>`: a headless [`ServiceRecord`].
//! - `identities/<ns>/<set>/<ordinal>/incarnation`: the last incarnation
//!   issued (a decimal number); never deleted, so incarnations only grow.
//! - `identities/<ns>/<set>/<ordinal>/holder`: the [`HolderRecord`] of the
//!   current holder, attached to the holder's lease: when the lease expires,
//!   etcd deletes the key and the identity is free.
//! - `endpoints/<ns>/<set>/<ordinal>`: the [`EndpointRecord`] the holder
//!   reported, attached to the same lease.

use petset_core::store::Store;
use petset_core::validate::Protocol;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::names::IdentityRef;

pub use petset_core::identity::HolderRecord;

/// A headless service, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Set once, at creation.
    pub uid: String,
    /// The namespace.
    pub namespace: String,
    /// The service's name.
    pub name: String,
    /// Labels of the service object itself.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the service object.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Grows by one with each change of the spec.
    pub generation: i64,
    /// When it was created.
    pub created: SystemTime,
    /// What the service selects and exposes.
    pub spec: ServiceSpec,
}

/// The parts of a Kubernetes `ServiceSpec` a headless service has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Pods whose labels contain all of these are behind the service.
    pub selector: BTreeMap<String, String>,
    /// Named ports; SRV records are made from them.
    pub ports: Vec<ServicePort>,
    /// Publish records for pods that are not ready too.
    pub publish_not_ready_addresses: bool,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// IANA service name; may be empty when it is the only port.
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The service's port number.
    pub port: u16,
    /// The pods' port.
    pub target_port: TargetPort,
}

/// A pod port, by number or by the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port's name.
    Name(String),
}

impl std::fmt::Display for TargetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(name) => f.write_str(name),
        }
    }
}

/// Where one pod runs, as its holder reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The namespace.
    pub namespace: String,
    /// The set.
    pub set_name: String,
    /// The replica number.
    pub ordinal: u32,
    /// The governing service (the pod's subdomain).
    pub service: String,
    /// The pod's address.
    pub address: IpAddr,
    /// The ports it listens on.
    pub ports: Vec<EndpointPort>,
    /// Whether it passes its readiness probe.
    pub ready: bool,
    /// The pod's labels.
    pub labels: BTreeMap<String, String>,
    /// The incarnation that reported it.
    pub incarnation: u64,
}

impl EndpointRecord {
    /// `<set>-<ordinal>`.
    pub fn pod_name(&self) -> String {
        crate::names::pod_name(&self.set_name, self.ordinal)
    }
}

/// One port a pod listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPort {
    /// The container port's name; may be empty.
    pub name: String,
    /// The number.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// The keys identity-svc uses, under one store's root.
#[derive(Debug, Clone)]
pub struct Keys<'a>(pub &'a Store);

impl Keys<'_> {
    /// `services/<ns>/<name>`.
    pub fn service(&self, namespace: &str, name: &str) -> String {
        self.0.key(&["services", namespace, name])
    }

    /// `services/` or `services/<ns>/`.
    pub fn services(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => self.0.prefix(&["services", ns]),
            None => self.0.prefix(&["services"]),
        }
    }

    /// `identities/<ns>/<set>/<ordinal>/holder`.
    pub fn holder(&self, r: &IdentityRef) -> String {
        r.holder_key(self.0)
    }

    /// `identities/<ns>/<set>/<ordinal>/incarnation`.
    pub fn incarnation(&self, r: &IdentityRef) -> String {
        r.incarnation_key(self.0)
    }

    /// `endpoints/<ns>/<set>/<ordinal>`.
    pub fn endpoint(&self, r: &IdentityRef) -> String {
        self.0.key(&[
            "endpoints",
            &r.namespace,
            &r.set_name,
            &r.ordinal.to_string(),
        ])
    }

    /// `endpoints/` or `endpoints/<ns>/`.
    pub fn endpoints(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => self.0.prefix(&["endpoints", ns]),
            None => self.0.prefix(&["endpoints"]),
        }
    }
}
