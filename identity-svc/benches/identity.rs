//! How much an identity costs over the raw etcd round trips it is made of.
//!
//! Starts a real etcd and an in-process identity-svc, then times, in the
//! same run:
//! - baseline: one raw etcd transaction (a compare-and-put) from this process;
//! - `IssueIdentity` over gRPC (two reads and a transaction in etcd);
//! - `ReportEndpoint` over gRPC (a read and a transaction);
//! - a DNS SRV query answered from the in-memory index, against a UDP echo
//!   round trip on loopback as its baseline.
//!
//! Run with `cargo bench -p identity-svc --bench identity`; results go in
//! BENCHMARKS.md as ratios to the baselines.

use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use identity_svc::{Listeners, Server};
use petset_core::shutdown::CancellationToken;
use petset_core::testing::bench::{Stats, raw_etcd_txn, report, time};
use petset_proto::v1;
use tokio::net::UdpSocket;

const ROUNDS: usize = 400;

#[tokio::main]
async fn main() {
    let etcd = petset_core::testing::Etcd::start();
    let store = etcd.store_config("bench");
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let (grpc, dns) = (
        listeners.grpc.local_addr().unwrap(),
        listeners.dns_udp.local_addr().unwrap(),
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(Server::run(
        store.clone(),
        "cluster.local",
        listeners,
        shutdown.clone(),
    ));
    let channel =
        petset_core::testing::wait_for("identity-svc", Duration::from_secs(10), || async {
            tonic::transport::Channel::from_shared(format!("http://{grpc}"))
                .ok()?
                .connect()
                .await
                .ok()
        })
        .await;
    let identities = v1::identities_client::IdentitiesClient::new(channel.clone());
    let mut services = v1::services_client::ServicesClient::new(channel.clone());
    let mut leases = v1::leases_client::LeasesClient::new(channel);
    let lease = leases
        .grant_lease(v1::GrantLeaseRequest { ttl_seconds: 600 })
        .await
        .unwrap()
        .into_inner()
        .lease_id;

    let raw = raw_etcd_txn(&store, ROUNDS).await;

    let reference = |i: usize| v1::IdentityRef {
        namespace: "default".into(),
        set_name: "bench".into(),
        ordinal: (i % 1_000_000) as i64,
    };
    let issue = time("IssueIdentity (gRPC)", ROUNDS, |i| {
        let mut identities = identities.clone();
        let request = v1::IssueIdentityRequest {
            r#ref: Some(reference(i)),
            service_name: "svc".into(),
            holder: "bench".into(),
            lease_id: lease,
        };
        async move {
            identities.issue_identity(request).await.unwrap();
        }
    })
    .await;
    let endpoint = time("ReportEndpoint (gRPC)", ROUNDS, |i| {
        let mut identities = identities.clone();
        let request = v1::ReportEndpointRequest {
            r#ref: Some(reference(i)),
            incarnation: 1,
            address: format!("127.1.{}.{}", (i / 250) % 250, i % 250 + 1),
            ports: vec![v1::EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            ready: true,
            // One pod in forty is behind the benchmarked service: ten pods,
            // an answer that fits a plain 512-byte UDP message.
            labels: [(
                "app".to_string(),
                if i % 40 == 0 { "bench" } else { "other" }.to_string(),
            )]
            .into(),
        };
        async move {
            identities.report_endpoint(request).await.unwrap();
        }
    })
    .await;

    services
        .create_service(v1::CreateServiceRequest {
            service: Some(v1::Service {
                metadata: Some(v1::ObjectMeta {
                    name: "svc".into(),
                    ..Default::default()
                }),
                spec: Some(v1::ServiceSpec {
                    selector: [("app".to_string(), "bench".to_string())].into(),
                    ports: vec![v1::ServicePort {
                        name: "http".into(),
                        port: 80,
                        target_port: "http".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
        })
        .await
        .unwrap();
    // UDP echo on loopback: the floor for any DNS answer.
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut query = Message::new(1, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(
        Name::from_ascii("_http._tcp.svc.default.svc.cluster.local.").unwrap(),
        RecordType::SRV,
    ));
    // With EDNS, as dig asks: the answer (SRV plus the targets' addresses)
    // is larger than a plain 512-byte message.
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    query.set_edns(edns);
    let wire = query.to_vec().unwrap();
    // Wait until DNS has the service's pods (one SRV record per ready pod).
    petset_core::testing::wait_for("DNS to index the pods", Duration::from_secs(10), || async {
        client.send_to(&wire, dns).await.ok()?;
        let mut buf = vec![0u8; 65535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        (Message::from_vec(&buf[..n]).ok()?.answers.len() >= 10).then_some(())
    })
    .await;
    let mut buf = vec![0u8; 65535];
    let client = &client;
    let buf = &mut buf;
    let mut udp_samples = Vec::new();
    let mut dns_samples = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        client.send_to(&wire, echo_addr).await.unwrap();
        client.recv_from(buf).await.unwrap();
        udp_samples.push(start.elapsed());
        let start = Instant::now();
        client.send_to(&wire, dns).await.unwrap();
        client.recv_from(buf).await.unwrap();
        dns_samples.push(start.elapsed());
    }
    let udp = Stats {
        name: "UDP echo (baseline)",
        samples: udp_samples,
    };
    let srv = Stats {
        name: "DNS SRV, 10 ready pods",
        samples: dns_samples,
    };

    println!("identity-svc, {ROUNDS} rounds each, one client, sequential");
    report(&raw, &raw);
    report(&issue, &raw);
    report(&endpoint, &raw);
    report(&udp, &udp);
    report(&srv, &udp);
    shutdown.cancel();
}
