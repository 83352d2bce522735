//! The tonic services: requests in, domain calls, replies out. No rules
//! live here; they are in the domain modules.

use std::collections::BTreeMap;

use petset_core::error::{Error, Violations};
use petset_core::store::Versioned;
use petset_core::store::page::PageRequest;
use petset_proto::v1::{self, identities_server, services_server};
use tonic::{Request, Response, Status};

use crate::endpoints::{EndpointReport, Endpoints, selects, sort_peers};
use crate::issuance::{Issuer, check_holder};
use crate::names::{IdentityRef, Zone, derive};
use crate::records::{EndpointPort, EndpointRecord, HolderRecord, ServiceRecord};
use crate::services::{self, Services};

/// `petset.v1.Identities`.
#[derive(Debug, Clone)]
pub struct IdentitiesApi {
    pub(crate) zone: Zone,
    pub(crate) issuer: Issuer,
    pub(crate) endpoints: Endpoints,
    pub(crate) services: Services,
}

/// `petset.v1.Services`.
#[derive(Debug, Clone)]
pub struct ServicesApi {
    pub(crate) services: Services,
}

fn reference(r: Option<&v1::IdentityRef>) -> Result<IdentityRef, Error> {
    let r =
        r.ok_or_else(|| Error::invalid("ref", "is required: namespace, set_name and ordinal"))?;
    IdentityRef::parse("ref", &r.namespace, &r.set_name, r.ordinal)
}

fn service_name(field: &str, name: &str) -> Result<(), Error> {
    let mut v = Violations::new();
    v.check(field, petset_core::validate::dns1123_label(name));
    v.into_result()
}

fn holder_to_api(h: &HolderRecord) -> v1::Holder {
    v1::Holder {
        holder: h.holder.clone(),
        lease_id: h.lease_id,
        incarnation: h.incarnation,
        issued_at: Some(h.issued_at.into()),
    }
}

fn identity_to_api(
    zone: &Zone,
    r: &IdentityRef,
    service: &str,
    holder: Option<&HolderRecord>,
    last: u64,
) -> v1::Identity {
    let derived = derive(zone, r, service);
    v1::Identity {
        namespace: r.namespace.clone(),
        set_name: r.set_name.clone(),
        ordinal: r.ordinal.into(),
        pod_name: derived.pod_name,
        hostname: derived.hostname,
        subdomain: derived.subdomain,
        fqdn: derived.fqdn,
        holder: holder.map(holder_to_api),
        last_incarnation: last,
    }
}

fn ports_to_api(ports: &[EndpointPort]) -> Vec<v1::EndpointPort> {
    ports
        .iter()
        .map(|p| v1::EndpointPort {
            name: p.name.clone(),
            port: p.port.into(),
            protocol: p.protocol.as_str().into(),
        })
        .collect()
}

#[tonic::async_trait]
impl identities_server::Identities for IdentitiesApi {
    async fn get_identity(
        &self,
        request: Request<v1::GetIdentityRequest>,
    ) -> Result<Response<v1::Identity>, Status> {
        let request = request.into_inner();
        let r = reference(request.r#ref.as_ref())?;
        let state = self.issuer.state(&r).await?;
        // The holder's record knows the governing service; a caller that
        // does not say which uses it.
        let service = match (&request.service_name, &state.holder) {
            (name, _) if !name.is_empty() => {
                service_name("service_name", name)?;
                name.clone()
            }
            (_, Some(holder)) => holder.service.clone(),
            _ => {
                return Err(Error::invalid(
                    "service_name",
                    "is required while nobody holds the identity",
                )
                .into());
            }
        };
        Ok(Response::new(identity_to_api(
            &self.zone,
            &r,
            &service,
            state.holder.as_ref(),
            state.last_incarnation,
        )))
    }

    async fn issue_identity(
        &self,
        request: Request<v1::IssueIdentityRequest>,
    ) -> Result<Response<v1::Identity>, Status> {
        let request = request.into_inner();
        let mut v = Violations::new();
        let r = v.merge(reference(request.r#ref.as_ref()))?;
        v.check(
            "service_name",
            petset_core::validate::dns1123_label(&request.service_name),
        );
        v.check("holder", check_holder(&request.holder));
        if request.lease_id <= 0 {
            v.add(
                "lease_id",
                format!(
                    "must be a granted lease id (> 0; see petset.v1.Leases/GrantLease), got {}",
                    request.lease_id
                ),
            );
        }
        v.into_result()?;
        let r = r.ok_or_else(|| Error::internal("an invalid reference left no violation"))?;
        let holder = self
            .issuer
            .issue(&r, &request.service_name, &request.holder, request.lease_id)
            .await?;
        let identity = identity_to_api(
            &self.zone,
            &r,
            &holder.service,
            Some(&holder),
            holder.incarnation,
        );
        Ok(Response::new(identity))
    }

    async fn release_identity(
        &self,
        request: Request<v1::ReleaseIdentityRequest>,
    ) -> Result<Response<v1::ReleaseIdentityResponse>, Status> {
        let request = request.into_inner();
        let r = reference(request.r#ref.as_ref())?;
        if request.incarnation == 0 {
            return Err(Error::invalid(
                "incarnation",
                "must be the incarnation IssueIdentity returned (>= 1)",
            )
            .into());
        }
        let released = self.issuer.release(&r, request.incarnation).await?;
        Ok(Response::new(v1::ReleaseIdentityResponse { released }))
    }

    async fn report_endpoint(
        &self,
        request: Request<v1::ReportEndpointRequest>,
    ) -> Result<Response<v1::Endpoint>, Status> {
        let request = request.into_inner();
        let r = reference(request.r#ref.as_ref())?;
        if request.incarnation == 0 {
            return Err(Error::invalid(
                "incarnation",
                "must be the incarnation IssueIdentity returned (>= 1)",
            )
            .into());
        }
        let ports: Vec<_> = request
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol.as_str()))
            .collect();
        let labels: BTreeMap<_, _> = request.labels.into_iter().collect();
        let report = EndpointReport::parse(&request.address, &ports, request.ready, labels)?;
        let record = self
            .endpoints
            .report(&r, request.incarnation, report)
            .await?;
        Ok(Response::new(endpoint_to_api(&self.zone, &record)))
    }

    async fn list_peers(
        &self,
        request: Request<v1::ListPeersRequest>,
    ) -> Result<Response<v1::ListPeersResponse>, Status> {
        let request = request.into_inner();
        let (namespace, name) = services::parse_name(&request.namespace, &request.service_name)
            .map_err(|e| rename(e, "name", "service_name"))?;
        let service = self.services.get(&namespace, &name).await?;
        let mut members: Vec<EndpointRecord> = self
            .endpoints
            .list(&namespace)
            .await?
            .into_iter()
            .filter(|e| selects(&service.value, e))
            .collect();
        sort_peers(&mut members);
        let peers = members
            .iter()
            .map(|e| v1::Peer {
                pod_name: e.pod_name(),
                fqdn: self.zone.pod_fqdn(&e.namespace, &e.service, &e.pod_name()),
                address: e.address.to_string(),
                ports: ports_to_api(&e.ports),
                ready: e.ready,
                ordinal: e.ordinal.into(),
                set_name: e.set_name.clone(),
            })
            .collect();
        Ok(Response::new(v1::ListPeersResponse { peers }))
    }
}

fn rename(error: Error, from: &str, to: &str) -> Error {
    match error {
        Error::InvalidArgument(mut violations) => {
            for v in &mut violations {
                if v.field == from {
                    v.field = to.to_string();
                }
            }
            Error::InvalidArgument(violations)
        }
        other => other,
    }
}

fn endpoint_to_api(zone: &Zone, e: &EndpointRecord) -> v1::Endpoint {
    let r = IdentityRef {
        namespace: e.namespace.clone(),
        set_name: e.set_name.clone(),
        ordinal: e.ordinal,
    };
    v1::Endpoint {
        identity: Some(identity_to_api(zone, &r, &e.service, None, e.incarnation)),
        address: e.address.to_string(),
        ports: ports_to_api(&e.ports),
        ready: e.ready,
        labels: e.labels.clone().into_iter().collect(),
        incarnation: e.incarnation,
    }
}

fn service_to_api(stored: &Versioned<ServiceRecord>) -> v1::Service {
    let s = &stored.value;
    v1::Service {
        metadata: Some(v1::ObjectMeta {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            labels: s.labels.clone().into_iter().collect(),
            annotations: s.annotations.clone().into_iter().collect(),
            uid: s.uid.clone(),
            resource_version: stored.mod_revision.to_string(),
            generation: s.generation,
            creation_timestamp: Some(s.created.into()),
        }),
        spec: Some(v1::ServiceSpec {
            cluster_ip: "None".into(),
            r#type: "ClusterIP".into(),
            selector: s.spec.selector.clone().into_iter().collect(),
            ports: s
                .spec
                .ports
                .iter()
                .map(|p| v1::ServicePort {
                    name: p.name.clone(),
                    protocol: p.protocol.as_str().into(),
                    port: p.port.into(),
                    target_port: p.target_port.to_string(),
                })
                .collect(),
            publish_not_ready_addresses: s.spec.publish_not_ready_addresses,
        }),
    }
}

#[tonic::async_trait]
impl services_server::Services for ServicesApi {
    async fn create_service(
        &self,
        request: Request<v1::CreateServiceRequest>,
    ) -> Result<Response<v1::Service>, Status> {
        let input = services::parse(request.into_inner().service.as_ref())?;
        Ok(Response::new(service_to_api(
            &self.services.create(input).await?,
        )))
    }

    async fn update_service(
        &self,
        request: Request<v1::UpdateServiceRequest>,
    ) -> Result<Response<v1::Service>, Status> {
        let input = services::parse(request.into_inner().service.as_ref())?;
        Ok(Response::new(service_to_api(
            &self.services.update(input).await?,
        )))
    }

    async fn apply_service(
        &self,
        request: Request<v1::ApplyServiceRequest>,
    ) -> Result<Response<v1::Service>, Status> {
        let input = services::parse(request.into_inner().service.as_ref())?;
        Ok(Response::new(service_to_api(
            &self.services.apply(input).await?,
        )))
    }

    async fn get_service(
        &self,
        request: Request<v1::GetServiceRequest>,
    ) -> Result<Response<v1::Service>, Status> {
        let request = request.into_inner();
        let (namespace, name) = services::parse_name(&request.namespace, &request.name)?;
        Ok(Response::new(service_to_api(
            &self.services.get(&namespace, &name).await?,
        )))
    }

    async fn list_services(
        &self,
        request: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        if !r.namespace.is_empty() {
            v.check(
                "namespace",
                petset_core::validate::dns1123_label(&r.namespace),
            );
        }
        let page = PageRequest::parse("limit", r.limit, "continue", &r.r#continue, &mut v);
        v.into_result()?;
        let namespace = (!r.namespace.is_empty()).then_some(r.namespace.as_str());
        let (services, token) = self.services.page(namespace, &page).await?;
        Ok(Response::new(v1::ListServicesResponse {
            services: services.iter().map(service_to_api).collect(),
            r#continue: token,
        }))
    }

    async fn delete_service(
        &self,
        request: Request<v1::DeleteServiceRequest>,
    ) -> Result<Response<v1::DeleteServiceResponse>, Status> {
        let request = request.into_inner();
        let (namespace, name) = services::parse_name(&request.namespace, &request.name)?;
        self.services.delete(&namespace, &name).await?;
        Ok(Response::new(v1::DeleteServiceResponse {}))
    }
}
