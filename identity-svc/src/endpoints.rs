//! Endpoints: where each pod runs, reported by the identity's holder, and
//! which pods a headless service selects.
//!
//! # Guarantees
//! - Only the current incarnation can report: the write is one transaction
//!   that checks the holder key has not changed since it was read.
//! - An endpoint lives on its holder's lease, so a dead holder's pod leaves
//!   DNS and the peer list when the lease expires.

use std::collections::BTreeMap;
use std::net::IpAddr;

use petset_core::error::{Error, Result, Violations};
use petset_core::store::{Compare, CompareOp, PutOptions, Store, Txn, TxnOp, encode};
use petset_core::validate::{self, Protocol};

use crate::issuance::Issuer;
use crate::names::IdentityRef;
use crate::records::{EndpointPort, EndpointRecord, Keys, ServiceRecord, TargetPort};

/// A report from the API, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointReport {
    /// The pod's address.
    pub address: IpAddr,
    /// The ports it listens on.
    pub ports: Vec<EndpointPort>,
    /// Ready or not.
    pub ready: bool,
    /// The pod's labels.
    pub labels: BTreeMap<String, String>,
}

/// A raw port from the API: name, number, protocol.
pub type RawPort<'a> = (&'a str, i32, &'a str);

impl EndpointReport {
    /// Checks a report's fields.
    pub fn parse(
        address: &str,
        ports: &[RawPort<'_>],
        ready: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut v = Violations::new();
        let address = match address.parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => Some(ip),
            Ok(ip) => {
                v.add(
                    "address",
                    format!("{ip} cannot be a pod's address (unspecified or multicast)"),
                );
                None
            }
            Err(_) => {
                v.add(
                    "address",
                    format!("must be an IPv4 or IPv6 address, got {address:?}"),
                );
                None
            }
        };
        let many = ports.len() > 1;
        let mut parsed = Vec::new();
        for (i, (name, number, protocol)) in ports.iter().enumerate() {
            let field = format!("ports[{i}]");
            if let Some((protocol, port)) =
                validate::named_port(&mut v, &field, name, *number, protocol, many)
            {
                parsed.push(EndpointPort {
                    name: name.to_string(),
                    port,
                    protocol,
                });
            }
        }
        v.check("labels", validate::labels(&labels));
        v.into_result()?;
        Ok(EndpointReport {
            address: address.expect("checked above"),
            ports: parsed,
            ready,
            labels,
        })
    }
}

/// Writes endpoints for the current holders.
#[derive(Debug, Clone)]
pub struct Endpoints {
    store: Store,
    issuer: Issuer,
}

impl Endpoints {
    /// Endpoints kept in `store`.
    pub fn new(store: Store) -> Self {
        Endpoints {
            issuer: Issuer::new(store.clone()),
            store,
        }
    }

    /// Records where `r` runs, if `incarnation` is the current one.
    pub async fn report(
        &self,
        r: &IdentityRef,
        incarnation: u64,
        report: EndpointReport,
    ) -> Result<EndpointRecord> {
        let holder = self.issuer.current_holder(r, incarnation).await?;
        let keys = Keys(&self.store);
        let record = EndpointRecord {
            namespace: r.namespace.clone(),
            set_name: r.set_name.clone(),
            ordinal: r.ordinal,
            service: holder.value.service.clone(),
            address: report.address,
            ports: report.ports,
            ready: report.ready,
            labels: report.labels,
            incarnation,
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(
                keys.holder(r),
                CompareOp::Equal,
                holder.mod_revision,
            )])
            .and_then([TxnOp::put(
                keys.endpoint(r),
                encode(&record)?,
                Some(PutOptions::new().with_lease(holder.value.lease_id)),
            )]);
        if !self.store.txn(txn).await?.succeeded() {
            return Err(Error::FailedPrecondition(format!(
                "identity {r} changed hands while incarnation {incarnation} reported; it may no longer act for it"
            )));
        }
        tracing::debug!(identity = %r, incarnation, address = %record.address, ready = record.ready, "endpoint reported");
        Ok(record)
    }

    /// Every endpoint in `namespace`.
    pub async fn list(&self, namespace: &str) -> Result<Vec<EndpointRecord>> {
        let (items, _) = self
            .store
            .list::<EndpointRecord>(&Keys(&self.store).endpoints(Some(namespace)))
            .await?;
        Ok(items.into_iter().map(|(_, v)| v.value).collect())
    }
}

/// Whether `service` selects the pod behind `endpoint`: same namespace, the
/// pod's subdomain is the service, and its labels contain the selector. A
/// service without a selector selects nothing, as in Kubernetes.
pub fn selects(service: &ServiceRecord, endpoint: &EndpointRecord) -> bool {
    endpoint.namespace == service.namespace
        && endpoint.service == service.name
        && !service.spec.selector.is_empty()
        && service
            .spec
            .selector
            .iter()
            .all(|(k, v)| endpoint.labels.get(k) == Some(v))
}

/// Whether DNS publishes `endpoint` for `service`: ready, or the service
/// publishes not-ready addresses too.
pub fn published(service: &ServiceRecord, endpoint: &EndpointRecord) -> bool {
    selects(service, endpoint) && (endpoint.ready || service.spec.publish_not_ready_addresses)
}

/// The port of `endpoint` that a service port targets, if the pod has it.
pub fn target_port(
    target: &TargetPort,
    protocol: Protocol,
    endpoint: &EndpointRecord,
) -> Option<u16> {
    match target {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => endpoint
            .ports
            .iter()
            .find(|p| &p.name == name && p.protocol == protocol)
            .map(|p| p.port),
    }
}

/// Sorts endpoints as peers are listed: by set, then ordinal.
pub fn sort_peers(endpoints: &mut [EndpointRecord]) {
    endpoints.sort_by(|a, b| (&a.set_name, a.ordinal).cmp(&(&b.set_name, b.ordinal)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_name_every_bad_field() {
        let err = EndpointReport::parse(
            "not-an-ip",
            &[("", 0, "TCP"), ("x", 8080, "HTTP")],
            true,
            BTreeMap::new(),
        )
        .unwrap_err()
        .to_string();
        for field in [
            "address",
            "ports[0].name",
            "ports[0].port",
            "ports[1].protocol",
        ] {
            assert!(err.contains(field), "{field} missing from {err}");
        }
        assert!(EndpointReport::parse("0.0.0.0", &[], true, BTreeMap::new()).is_err());
        assert!(EndpointReport::parse("::1", &[("http", 8080, "")], true, BTreeMap::new()).is_ok());
    }
}
