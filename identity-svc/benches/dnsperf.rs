//! identity-svc's DNS against dnsmasq answering the same records, both
//! driven by dnsperf (with EDNS0) in the same run: queries per second for a headless
//! service's names (each pod's A record, the service's A records, its SRV
//! records).
//!
//! Starts a real etcd and an in-process identity-svc with a headless
//! service of 10 ready pods, and dnsmasq (`--no-resolv`, authoritative for
//! nothing else) given the same A and SRV records; then runs dnsperf
//! against each for the same time with the same query list.
//!
//! Run with `cargo bench -p identity-svc --bench dnsperf` (needs etcd,
//! dnsmasq and dnsperf: `scripts/install-deps` installs them).
//! `PETSET_BENCH_SECONDS` (10) sets each run's length. Results go in
//! BENCHMARKS.md.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use identity_svc::{Listeners, Server};
use petset_core::shutdown::CancellationToken;
use petset_core::testing::free_port;
use petset_proto::v1;
use tokio::net::UdpSocket;

const PODS: usize = 10;
const ZONE: &str = "default.svc.cluster.local";

/// `dnsperf` against `port` for `seconds` with the queries in `queries`:
/// queries per second, and the share answered NOERROR.
fn dnsperf(port: u16, queries: &std::path::Path, seconds: u64) -> (f64, String) {
    let out = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            "8",
            "-T",
            "2",
            "-q",
            "200",
            "-e",
        ])
        .output()
        .expect("dnsperf runs (scripts/install-deps installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let qps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("dnsperf printed no rate:\n{text}"));
    let codes = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Response codes:"))
        .unwrap_or_default()
        .trim()
        .to_string();
    (qps, codes)
}

/// Asks `port` for the SRV records of the service; how many came back.
async fn srv_answers(port: u16) -> Option<usize> {
    let client = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let mut query = Message::new(1, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(
        Name::from_ascii(format!("_http._tcp.kubia.{ZONE}.")).ok()?,
        RecordType::SRV,
    ));
    // With EDNS: ten SRV records and their targets' addresses are more
    // than a plain 512-byte message holds.
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    query.set_edns(edns);
    client
        .send_to(&query.to_vec().ok()?, ("127.0.0.1", port))
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(Message::from_vec(&buf[..n]).ok()?.answers.len())
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("PETSET_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let etcd = petset_core::testing::Etcd::start();
    let store = etcd.store_config("dnsperf");
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let grpc = listeners.grpc.local_addr().unwrap();
    let ours = listeners.dns_udp.local_addr().unwrap().port();
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
    let mut identities = v1::identities_client::IdentitiesClient::new(channel.clone());
    let mut services = v1::services_client::ServicesClient::new(channel.clone());
    let lease = v1::leases_client::LeasesClient::new(channel)
        .grant_lease(v1::GrantLeaseRequest { ttl_seconds: 600 })
        .await
        .unwrap()
        .into_inner()
        .lease_id;
    services
        .create_service(v1::CreateServiceRequest {
            service: Some(v1::Service {
                metadata: Some(v1::ObjectMeta {
                    name: "kubia".into(),
                    ..Default::default()
                }),
                spec: Some(v1::ServiceSpec {
                    selector: [("app".to_string(), "kubia".to_string())].into(),
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
    for i in 0..PODS {
        let reference = v1::IdentityRef {
            namespace: "default".into(),
            set_name: "kubia".into(),
            ordinal: i as i64,
        };
        identities
            .issue_identity(v1::IssueIdentityRequest {
                r#ref: Some(reference.clone()),
                service_name: "kubia".into(),
                holder: "bench".into(),
                lease_id: lease,
            })
            .await
            .unwrap();
        identities
            .report_endpoint(v1::ReportEndpointRequest {
                r#ref: Some(reference),
                incarnation: 1,
                address: format!("10.0.0.{}", i + 1),
                ports: vec![v1::EndpointPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: "TCP".into(),
                }],
                ready: true,
                labels: [("app".to_string(), "kubia".to_string())].into(),
            })
            .await
            .unwrap();
    }
    petset_core::testing::wait_for("DNS to index the pods", Duration::from_secs(10), || async {
        (srv_answers(ours).await? == PODS).then_some(())
    })
    .await;

    // dnsmasq with the same records.
    let theirs = free_port();
    let mut args = vec![
        "--keep-in-foreground".to_string(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--pid-file=".into(),
        "--bind-interfaces".into(),
        "--listen-address=127.0.0.1".into(),
        format!("--port={theirs}"),
        "--local-ttl=5".into(),
        // Answers for the zone from its own records only, never forwarded.
        "--local=/cluster.local/".into(),
    ];
    for i in 0..PODS {
        let pod = format!("kubia-{i}.kubia.{ZONE}");
        let ip = format!("10.0.0.{}", i + 1);
        args.push(format!("--host-record={pod},{ip}"));
        args.push(format!("--host-record=kubia.{ZONE},{ip}"));
        args.push(format!(
            "--srv-host=_http._tcp.kubia.{ZONE},{pod},8080,0,{}",
            100 / PODS
        ));
    }
    let mut dnsmasq = Command::new("dnsmasq")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq runs (scripts/install-deps installs it)");
    petset_core::testing::wait_for("dnsmasq to answer", Duration::from_secs(10), || async {
        (srv_answers(theirs).await? == PODS).then_some(())
    })
    .await;

    let mut queries = tempfile::NamedTempFile::new().unwrap();
    for i in 0..PODS {
        writeln!(queries, "kubia-{i}.kubia.{ZONE} A").unwrap();
    }
    writeln!(queries, "kubia.{ZONE} A").unwrap();
    writeln!(queries, "_http._tcp.kubia.{ZONE} SRV").unwrap();
    queries.flush().unwrap();

    let (baseline, their_codes) = dnsperf(theirs, queries.path(), seconds);
    let (qps, our_codes) = dnsperf(ours, queries.path(), seconds);
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    println!(
        "DNS, {PODS} ready pods behind one headless service, dnsperf -e -c 8 -T 2 -q 200, {seconds} s each"
    );
    println!("dnsmasq (baseline): {baseline:.0} queries/s ({their_codes})");
    println!(
        "identity-svc:       {qps:.0} queries/s ({our_codes}) = {:.2}x dnsmasq",
        qps / baseline
    );
    shutdown.cancel();
}
