//! Headless services: the names that govern a StatefulSet's pods.
//!
//! petset supports `clusterIP: None` only. A stateful application talks to a
//! particular pod (`kubia-0.kubia`), or lists them all through DNS; a
//! load-balanced virtual address would hide which pod it reached.
//!
//! # Guarantees
//! - A service is validated whole before anything is written, and written in
//!   one transaction guarded by the revision it was read at.
//! - `uid` and the creation time never change; `generation` grows by one
//!   with each change of the spec.

use std::collections::BTreeMap;
use std::time::SystemTime;

use petset_core::error::{Error, Result, Violations};
use petset_core::store::page::PageRequest;
use petset_core::store::{
    Compare, CompareOp, Store, Txn, TxnOp, Versioned, decode_or_skip, encode,
};
use petset_core::{meta, validate};
use petset_proto::v1;

use crate::records::{Keys, ServicePort, ServiceRecord, ServiceSpec, TargetPort};

/// A checked service from the API, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInput {
    /// The namespace (never empty).
    pub namespace: String,
    /// The name.
    pub name: String,
    /// Object labels.
    pub labels: BTreeMap<String, String>,
    /// Object annotations.
    pub annotations: BTreeMap<String, String>,
    /// The spec.
    pub spec: ServiceSpec,
    /// Write only over this revision, when given.
    pub resource_version: Option<i64>,
}

/// A DNS-1035 label, which is what Kubernetes asks of a service name: a
/// DNS-1123 label that starts with a letter (it becomes a DNS name's
/// leftmost part and some resolvers refuse a leading digit).
fn dns1035_label(value: &str) -> std::result::Result<(), String> {
    validate::dns1123_label(value)?;
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "{value:?} must start with a lower-case letter (DNS-1035 label), e.g. 'my-service'"
        ));
    }
    Ok(())
}

/// Checks a service from the API; every broken rule is named.
pub fn parse(service: Option<&v1::Service>) -> Result<ServiceInput> {
    let Some(service) = service else {
        return Err(Error::invalid("service", "is required"));
    };
    let meta = service.metadata.clone().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    let namespace = validate::namespace_or_default(&meta.namespace);
    let mut v = Violations::new();
    v.check("service.metadata.name", dns1035_label(&meta.name));
    v.check(
        "service.metadata.namespace",
        validate::dns1123_label(&namespace),
    );
    let labels: BTreeMap<_, _> = meta.labels.into_iter().collect();
    v.check("service.metadata.labels", validate::labels(&labels));
    let resource_version = meta::parse_resource_version(
        "service.metadata.resource_version",
        &meta.resource_version,
        &mut v,
    );
    match spec.cluster_ip.as_str() {
        "" | "None" => {}
        other => v.add(
            "service.spec.cluster_ip",
            format!("petset supports headless services only: set clusterIP: None (got {other:?})"),
        ),
    }
    match spec.r#type.as_str() {
        "" | "ClusterIP" => {}
        other => v.add(
            "service.spec.type",
            format!("type {other:?} is not supported: petset serves headless services (type ClusterIP with clusterIP: None)"),
        ),
    }
    let selector: BTreeMap<_, _> = spec.selector.into_iter().collect();
    v.check("service.spec.selector", validate::labels(&selector));
    let mut ports = Vec::new();
    let many = spec.ports.len() > 1;
    for (i, port) in spec.ports.iter().enumerate() {
        let prefix = format!("service.spec.ports[{i}]");
        let checked =
            validate::named_port(&mut v, &prefix, &port.name, port.port, &port.protocol, many);
        let target_port = match port.target_port.as_str() {
            "" => checked.map(|(_, number)| TargetPort::Number(number)),
            text => match text.parse::<i64>() {
                Ok(n) => match validate::port(n) {
                    Ok(()) => Some(TargetPort::Number(n as u16)),
                    Err(reason) => {
                        v.add(format!("{prefix}.target_port"), reason);
                        None
                    }
                },
                Err(_) => match validate::iana_svc_name(text) {
                    Ok(()) => Some(TargetPort::Name(text.to_string())),
                    Err(reason) => {
                        v.add(
                            format!("{prefix}.target_port"),
                            format!("must be a port number or a container port name: {reason}"),
                        );
                        None
                    }
                },
            },
        };
        if let (Some((protocol, number)), Some(target_port)) = (checked, target_port) {
            ports.push(ServicePort {
                name: port.name.clone(),
                protocol,
                port: number,
                target_port,
            });
        }
    }
    for (i, a) in ports.iter().enumerate() {
        for b in &ports[..i] {
            if !a.name.is_empty() && a.name == b.name {
                v.add(
                    "service.spec.ports",
                    format!("port name {:?} is used twice", a.name),
                );
            }
            if a.port == b.port && a.protocol == b.protocol {
                v.add(
                    "service.spec.ports",
                    format!("port {}/{} is listed twice", a.port, a.protocol.as_str()),
                );
            }
        }
    }
    v.into_result()?;
    Ok(ServiceInput {
        namespace,
        name: meta.name,
        labels,
        annotations: meta.annotations.into_iter().collect(),
        spec: ServiceSpec {
            selector,
            ports,
            publish_not_ready_addresses: spec.publish_not_ready_addresses,
        },
        resource_version,
    })
}

/// Names a service for `namespace/name` validation on reads.
pub fn parse_name(namespace: &str, name: &str) -> Result<(String, String)> {
    let namespace = validate::namespaced_name(namespace, name, dns1035_label)?;
    Ok((namespace, name.to_string()))
}

/// The stored services.
#[derive(Debug, Clone)]
pub struct Services {
    store: Store,
}

impl Services {
    /// Services kept in `store`.
    pub fn new(store: Store) -> Self {
        Services { store }
    }

    fn not_found(namespace: &str, name: &str) -> Error {
        Error::NotFound {
            kind: "service",
            name: format!("{namespace}/{name}"),
        }
    }

    /// Creates a service; `AlreadyExists` if the name is taken.
    pub async fn create(&self, input: ServiceInput) -> Result<Versioned<ServiceRecord>> {
        let key = Keys(&self.store).service(&input.namespace, &input.name);
        let record = ServiceRecord {
            uid: uuid::Uuid::new_v4().to_string(),
            namespace: input.namespace.clone(),
            name: input.name.clone(),
            labels: input.labels,
            annotations: input.annotations,
            generation: 1,
            created: SystemTime::now(),
            spec: input.spec,
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), encode(&record)?, None)]);
        let response = self.store.txn(txn).await?;
        if !response.succeeded() {
            return Err(Error::AlreadyExists {
                kind: "service",
                name: format!("{}/{}", input.namespace, input.name),
            });
        }
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        tracing::info!(namespace = %record.namespace, name = %record.name, "service created");
        Ok(Versioned {
            value: record,
            mod_revision: revision,
            create_revision: revision,
            lease: 0,
        })
    }

    /// Replaces a service's labels, annotations and spec.
    pub async fn update(&self, input: ServiceInput) -> Result<Versioned<ServiceRecord>> {
        let key = Keys(&self.store).service(&input.namespace, &input.name);
        let current: Versioned<ServiceRecord> = self
            .store
            .fetch(
                &key,
                "service",
                format!("{}/{}", input.namespace, input.name),
            )
            .await?;
        self.update_over(current, input).await
    }

    async fn update_over(
        &self,
        current: Versioned<ServiceRecord>,
        input: ServiceInput,
    ) -> Result<Versioned<ServiceRecord>> {
        if let Some(rv) = input.resource_version
            && rv != current.mod_revision
        {
            return Err(Error::Conflict(format!(
                "service {}/{} changed since version {rv} (now {}); read it again and reapply",
                input.namespace, input.name, current.mod_revision
            )));
        }
        let key = Keys(&self.store).service(&input.namespace, &input.name);
        let mut record = current.value.clone();
        if record.spec != input.spec {
            record.generation += 1;
        }
        record.labels = input.labels;
        record.annotations = input.annotations;
        record.spec = input.spec;
        if record == current.value {
            return Ok(current);
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                current.mod_revision,
            )])
            .and_then([TxnOp::put(key, encode(&record)?, None)]);
        let response = self.store.txn(txn).await?;
        if !response.succeeded() {
            return Err(Error::Conflict(format!(
                "service {}/{} was changed by someone else meanwhile; read it again and reapply",
                input.namespace, input.name
            )));
        }
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        tracing::info!(namespace = %record.namespace, name = %record.name, generation = record.generation, "service updated");
        Ok(Versioned {
            value: record,
            mod_revision: revision,
            create_revision: current.create_revision,
            lease: 0,
        })
    }

    /// Creates the service or updates it: what `apply` does. Retries when a
    /// concurrent writer wins a round.
    pub async fn apply(&self, input: ServiceInput) -> Result<Versioned<ServiceRecord>> {
        let key = Keys(&self.store).service(&input.namespace, &input.name);
        let mut last = None;
        for _ in 0..5 {
            let outcome = match self.store.get::<ServiceRecord>(&key).await? {
                None => self.create(input.clone()).await,
                Some(current) => self.update_over(current, input.clone()).await,
            };
            match outcome {
                Err(error @ (Error::AlreadyExists { .. } | Error::Conflict(_)))
                    if input.resource_version.is_none() =>
                {
                    last = Some(error);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::internal("apply gave up without an error")))
    }

    /// Reads one service.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Versioned<ServiceRecord>> {
        self.store
            .fetch(
                &Keys(&self.store).service(namespace, name),
                "service",
                format!("{namespace}/{name}"),
            )
            .await
    }

    /// Lists the services of one namespace, or of all.
    pub async fn list(&self, namespace: Option<&str>) -> Result<Vec<Versioned<ServiceRecord>>> {
        Ok(self.page(namespace, &PageRequest::default()).await?.0)
    }

    /// One page of [`Services::list`], with the token of the next (empty
    /// after the last).
    pub async fn page(
        &self,
        namespace: Option<&str>,
        page: &PageRequest,
    ) -> Result<(Vec<Versioned<ServiceRecord>>, String)> {
        let read = self
            .store
            .list_page(&Keys(&self.store).services(namespace), page)
            .await?;
        let services = read
            .kvs
            .iter()
            .filter_map(decode_or_skip::<ServiceRecord>)
            .collect();
        Ok((services, read.continue_token()))
    }

    /// Deletes a service; `NotFound` if there is none.
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<()> {
        let key = Keys(&self.store).service(namespace, name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::delete(key, None)]);
        if !self.store.txn(txn).await?.succeeded() {
            return Err(Self::not_found(namespace, name));
        }
        tracing::info!(%namespace, %name, "service deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petset_core::validate::Protocol;

    fn service(f: impl FnOnce(&mut v1::Service)) -> v1::Service {
        let mut s = v1::Service {
            metadata: Some(v1::ObjectMeta {
                name: "kubia".into(),
                ..Default::default()
            }),
            spec: Some(v1::ServiceSpec {
                cluster_ip: "None".into(),
                selector: [("app".to_string(), "kubia".to_string())].into(),
                ports: vec![v1::ServicePort {
                    name: "http".into(),
                    port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        f(&mut s);
        s
    }

    fn field_of(result: Result<ServiceInput>) -> Vec<String> {
        match result {
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn the_seed_service_is_accepted_with_defaults() {
        let input = parse(Some(&service(|_| {}))).unwrap();
        assert_eq!(input.namespace, "default");
        assert_eq!(input.spec.ports[0].protocol, Protocol::Tcp);
        assert_eq!(input.spec.ports[0].target_port, TargetPort::Number(80));
    }

    #[test]
    fn only_headless_services() {
        let fields = field_of(parse(Some(&service(|s| {
            s.spec.as_mut().unwrap().cluster_ip = "10.0.0.1".into()
        }))));
        assert_eq!(fields, ["service.spec.cluster_ip"]);
        let fields = field_of(parse(Some(&service(|s| {
            s.spec.as_mut().unwrap().r#type = "NodePort".into()
        }))));
        assert_eq!(fields, ["service.spec.type"]);
    }

    #[test]
    fn every_bad_port_field_is_named() {
        let fields = field_of(parse(Some(&service(|s| {
            s.spec.as_mut().unwrap().ports = vec![
                v1::ServicePort {
                    name: "".into(),
                    port: 0,
                    protocol: "tcp".into(),
                    target_port: "70000".into(),
                },
                v1::ServicePort {
                    name: "Bad_Name".into(),
                    port: 80,
                    ..Default::default()
                },
            ]
        }))));
        assert_eq!(
            fields,
            [
                "service.spec.ports[0].name",
                "service.spec.ports[0].protocol",
                "service.spec.ports[0].port",
                "service.spec.ports[0].target_port",
                "service.spec.ports[1].name",
            ]
        );
    }

    #[test]
    fn names_must_be_dns_labels() {
        let fields = field_of(parse(Some(&service(|s| {
            s.metadata.as_mut().unwrap().name = "0kubia".into()
        }))));
        assert_eq!(fields, ["service.metadata.name"]);
        let fields = field_of(parse(Some(&service(|s| {
            s.metadata.as_mut().unwrap().namespace = "../etc".into()
        }))));
        assert_eq!(fields, ["service.metadata.namespace"]);
    }
}
