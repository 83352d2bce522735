//! Starts a real identity-svc against the test harness's etcd, and talks to
//! it over gRPC and DNS as clients do.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use identity_svc::{Listeners, Server};
use petset_core::shutdown::CancellationToken;
use petset_core::store::StoreConfig;
use petset_proto::v1;
use petset_proto::v1::identities_client::IdentitiesClient;
use petset_proto::v1::leases_client::LeasesClient;
use petset_proto::v1::services_client::ServicesClient;
use tokio::net::UdpSocket;
use tonic::transport::Channel;

/// One identity-svc, stopped when dropped.
pub struct TestServer {
    pub grpc: SocketAddr,
    pub dns: SocketAddr,
    pub store: StoreConfig,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server over `store` (pass the same config to start a
    /// second replica or a restarted one).
    pub async fn start(store: StoreConfig) -> TestServer {
        let listeners = Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let grpc = listeners.grpc.local_addr().unwrap();
        let dns = listeners.dns_udp.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (store, shutdown) = (store.clone(), shutdown.clone());
            async move {
                Server::run(store, "cluster.local", listeners, shutdown)
                    .await
                    .expect("identity-svc runs")
            }
        });
        let server = TestServer {
            grpc,
            dns,
            store,
            shutdown,
            task: Some(task),
        };
        petset_core::testing::wait_for(
            "identity-svc to answer gRPC",
            Duration::from_secs(10),
            || async {
                let channel = Channel::from_shared(format!("http://{grpc}"))
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .ok()
            },
        )
        .await;
        server
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn identities(&self) -> IdentitiesClient<Channel> {
        IdentitiesClient::new(self.channel().await)
    }

    pub async fn services(&self) -> ServicesClient<Channel> {
        ServicesClient::new(self.channel().await)
    }

    pub async fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel().await)
    }

    /// A real resolver pointed at this server only, without a cache.
    pub fn resolver(&self) -> TokioResolver {
        let mut server = NameServerConfig::udp_and_tcp(self.dns.ip());
        for connection in &mut server.connections {
            connection.port = self.dns.port();
        }
        let mut options = ResolverOpts::default();
        options.cache_size = 0;
        // 127.x addresses would otherwise be answered from /etc/hosts.
        options.use_hosts_file = ResolveHosts::Never;
        options.attempts = 1;
        options.timeout = Duration::from_secs(2);
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![server]),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .unwrap()
    }

    /// Sends one query over UDP and returns the whole response, for
    /// checking header bits and response codes.
    pub async fn ask(&self, name: &str, qtype: RecordType) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut query = Message::new(rand_id(), MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        socket
            .send_to(&query.to_vec().unwrap(), self.dns)
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let response = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(response.metadata.id, query.metadata.id);
        response
    }
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn rcode(message: &Message) -> ResponseCode {
    message.metadata.response_code
}

pub fn kubia_service() -> v1::Service {
    v1::Service {
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
                target_port: "http".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// Creates the seed's headless service `kubia`.
pub async fn create_kubia(server: &TestServer) {
    server
        .services()
        .await
        .create_service(v1::CreateServiceRequest {
            service: Some(kubia_service()),
        })
        .await
        .unwrap();
}

pub fn kubia_ref(ordinal: i64) -> v1::IdentityRef {
    v1::IdentityRef {
        namespace: "default".into(),
        set_name: "kubia".into(),
        ordinal,
    }
}

pub async fn grant(server: &TestServer, ttl: i64) -> i64 {
    server
        .leases()
        .await
        .grant_lease(v1::GrantLeaseRequest { ttl_seconds: ttl })
        .await
        .unwrap()
        .into_inner()
        .lease_id
}

pub async fn issue(
    server: &TestServer,
    ordinal: i64,
    holder: &str,
    lease: i64,
) -> Result<v1::Identity, tonic::Status> {
    server
        .identities()
        .await
        .issue_identity(v1::IssueIdentityRequest {
            r#ref: Some(kubia_ref(ordinal)),
            service_name: "kubia".into(),
            holder: holder.into(),
            lease_id: lease,
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn report(
    server: &TestServer,
    ordinal: i64,
    incarnation: u64,
    address: &str,
    ready: bool,
) -> Result<v1::Endpoint, tonic::Status> {
    server
        .identities()
        .await
        .report_endpoint(v1::ReportEndpointRequest {
            r#ref: Some(kubia_ref(ordinal)),
            incarnation,
            address: address.into(),
            ports: vec![v1::EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            ready,
            labels: [("app".to_string(), "kubia".to_string())].into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The SRV targets and ports a real resolver gets for the kubia service,
/// sorted; empty when the name has no records.
pub async fn srv(resolver: &TokioResolver) -> Vec<(String, u16)> {
    match resolver
        .lookup(
            "_http._tcp.kubia.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await
    {
        Ok(lookup) => {
            let mut out: Vec<(String, u16)> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_proto::rr::RData::SRV(srv) => Some((srv.target.to_string(), srv.port)),
                    _ => None,
                })
                .collect();
            out.sort();
            out
        }
        Err(_) => vec![],
    }
}

pub use petset_core::testing::all_keys;
