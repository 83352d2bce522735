//! The `petset.v1.Leases` gRPC service: etcd leases for processes that do not
//! speak to etcd themselves (node agents, tools, tests).

use petset_proto::v1::{
    GrantLeaseRequest, KeepAliveLeaseRequest, Lease, RevokeLeaseRequest, RevokeLeaseResponse,
    leases_server,
};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::store::Store;

/// Serves `petset.v1.Leases` from a [`Store`].
#[derive(Debug, Clone)]
pub struct LeaseService {
    store: Store,
}

impl LeaseService {
    /// The service over `store`.
    pub fn new(store: Store) -> Self {
        LeaseService { store }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> leases_server::LeasesServer<Self> {
        leases_server::LeasesServer::new(self)
    }
}

fn lease_id(id: i64) -> Result<i64, Error> {
    if id <= 0 {
        Err(Error::invalid(
            "lease_id",
            format!("must be a granted lease id (> 0), got {id}"),
        ))
    } else {
        Ok(id)
    }
}

#[tonic::async_trait]
impl leases_server::Leases for LeaseService {
    async fn grant_lease(
        &self,
        request: Request<GrantLeaseRequest>,
    ) -> Result<Response<Lease>, Status> {
        let ttl = request.into_inner().ttl_seconds;
        let id = self.store.grant_lease(ttl).await?;
        tracing::info!(lease = id, ttl, "lease granted");
        Ok(Response::new(Lease {
            lease_id: id,
            ttl_seconds: ttl,
        }))
    }

    async fn keep_alive_lease(
        &self,
        request: Request<KeepAliveLeaseRequest>,
    ) -> Result<Response<Lease>, Status> {
        let id = lease_id(request.into_inner().lease_id)?;
        let ttl = self.store.renew_lease(id).await?;
        Ok(Response::new(Lease {
            lease_id: id,
            ttl_seconds: ttl,
        }))
    }

    async fn revoke_lease(
        &self,
        request: Request<RevokeLeaseRequest>,
    ) -> Result<Response<RevokeLeaseResponse>, Status> {
        let id = lease_id(request.into_inner().lease_id)?;
        self.store.revoke_lease(id).await?;
        tracing::info!(lease = id, "lease revoked");
        Ok(Response::new(RevokeLeaseResponse {}))
    }
}
