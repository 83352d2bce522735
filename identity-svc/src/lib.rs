//! identity-svc owns who each pod *is*: it derives stable identities, issues
//! each to one holder at a time with an incarnation number (the fencing token
//! the other services check), stores headless services, and answers DNS for
//! them. All state is in etcd, so any number of replicas answer the same.
//!
//! # Layout
//! - [`names`]: identities derived from (namespace, set, ordinal); the zone.
//! - [`records`]: what is stored in etcd, and the key layout.
//! - [`issuance`]: issuing and releasing identities, fenced by incarnation.
//! - [`endpoints`]: where pods run; which pods a service selects.
//! - [`services`]: headless services, validated and stored.
//! - [`dns`]: the authoritative DNS server for the zone.
//! - [`grpc`]: the tonic services over the modules above.
//! - [`config`]: settings ([`ServeError`] is the shared start-up failure).

pub mod config;
pub mod dns;
pub mod endpoints;
pub mod grpc;
pub mod issuance;
pub mod names;
pub mod records;
pub mod services;

use std::net::SocketAddr;

use petset_core::lease_service::LeaseService;
use petset_core::serve::ServiceHost;
use petset_core::shutdown::CancellationToken;
use petset_core::store::mirror::Decoded;
use petset_core::store::{Store, StoreConfig};
use petset_proto::v1::{identities_server::IdentitiesServer, services_server::ServicesServer};
use tokio::net::{TcpListener, UdpSocket};

pub use config::Config;
pub use petset_core::serve::ServeError;

use crate::endpoints::Endpoints;
use crate::grpc::{IdentitiesApi, ServicesApi};
use crate::issuance::Issuer;
use crate::names::Zone;
use crate::records::Keys;
use crate::services::Services;

/// The sockets identity-svc serves on, bound before it runs (tests bind
/// port 0 and read the addresses back).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC and `/metrics`.
    pub grpc: TcpListener,
    /// DNS over UDP.
    pub dns_udp: UdpSocket,
    /// DNS over TCP.
    pub dns_tcp: TcpListener,
}

impl Listeners {
    /// Binds the gRPC address and the DNS address (UDP and TCP). With DNS
    /// port 0, UDP and TCP get the same, free, port.
    pub async fn bind(grpc: SocketAddr, dns: SocketAddr) -> Result<Listeners, ServeError> {
        let bind_err = |what, addr| move |source| ServeError::Bind { what, addr, source };
        let grpc_listener = TcpListener::bind(grpc)
            .await
            .map_err(bind_err("gRPC", grpc))?;
        let mut last = None;
        for _ in 0..10 {
            let dns_udp = UdpSocket::bind(dns)
                .await
                .map_err(bind_err("DNS/UDP", dns))?;
            let udp_addr = dns_udp.local_addr().map_err(bind_err("DNS/UDP", dns))?;
            match TcpListener::bind(udp_addr).await {
                Ok(dns_tcp) => {
                    return Ok(Listeners {
                        grpc: grpc_listener,
                        dns_udp,
                        dns_tcp,
                    });
                }
                // Port 0 gave a UDP port whose TCP twin is taken: try another.
                Err(source) if dns.port() == 0 => last = Some(source),
                Err(source) => {
                    return Err(ServeError::Bind {
                        what: "DNS/TCP",
                        addr: udp_addr,
                        source,
                    });
                }
            }
        }
        Err(ServeError::Bind {
            what: "DNS/TCP",
            addr: dns,
            source: last.expect("set in the loop"),
        })
    }
}

/// The running service.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Serves until `shutdown` is cancelled.
    pub async fn run(
        store: StoreConfig,
        zone: &str,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let zone = Zone::new(zone).map_err(|reason| ServeError::Config {
            setting: "zone",
            reason,
        })?;
        let store = Store::connect(&store).await.map_err(ServeError::Store)?;
        let services = Services::new(store.clone());
        let identities = IdentitiesApi {
            zone: zone.clone(),
            issuer: Issuer::new(store.clone()),
            endpoints: Endpoints::new(store.clone()),
            services: services.clone(),
        };
        let keys = Keys(&store);
        let handler = dns::DnsHandler::follow(
            zone.clone(),
            Decoded::spawn(&store, keys.services(None)),
            Decoded::spawn(&store, keys.endpoints(None)),
            shutdown.clone(),
        );
        tracing::info!(
            grpc = %listeners.grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            dns = %listeners.dns_udp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            zone = zone.as_str(),
            root = store.root(),
            "identity-svc serving"
        );
        let dns = tokio::spawn(dns::serve(
            handler,
            listeners.dns_udp,
            listeners.dns_tcp,
            shutdown.clone(),
        ));
        let mut host = ServiceHost::new();
        host.add_service(IdentitiesServer::new(identities))
            .add_service(ServicesServer::new(ServicesApi { services }))
            .add_service(LeaseService::new(store.clone()).into_server());
        let served = host
            .serve(listeners.grpc, shutdown.clone())
            .await
            .map_err(ServeError::Grpc);
        shutdown.cancel();
        let _ = dns.await;
        tracing::info!("identity-svc stopped");
        served
    }
}
