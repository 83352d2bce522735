//! identity-svc against a real etcd: at most one holder, fencing by
//! incarnation, restarts, replicas, DNS through a real resolver, and bad
//! input that changes nothing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use petset_core::testing::{self, wait_for};
use petset_proto::v1;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn fifty_concurrent_issues_have_exactly_one_winner() {
    let server = TestServer::start(testing::shared().store_config("race")).await;
    let mut leases = Vec::new();
    for _ in 0..50 {
        leases.push(grant(&server, 60).await);
    }
    let attempts = leases.iter().enumerate().map(|(i, lease)| {
        let holder = format!("holder-{i}");
        let server = &server;
        async move { (holder.clone(), issue(server, 0, &holder, *lease).await) }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let winners: Vec<_> = outcomes
        .iter()
        .filter_map(|(h, r)| r.as_ref().ok().map(|id| (h.clone(), id.clone())))
        .collect();
    assert_eq!(winners.len(), 1, "exactly one holder wins: {winners:?}");
    let (winner, identity) = &winners[0];
    assert_eq!(identity.holder.as_ref().unwrap().incarnation, 1);
    assert_eq!(identity.pod_name, "kubia-0");
    assert_eq!(identity.fqdn, "kubia-0.kubia.default.svc.cluster.local");
    for (holder, outcome) in &outcomes {
        if holder == winner {
            continue;
        }
        let status = outcome.as_ref().unwrap_err();
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{holder}: {status:?}"
        );
        assert!(
            status.message().contains(&format!("held by {winner:?}")),
            "names the holder: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn issuing_again_to_the_same_holder_is_idempotent() {
    let server = TestServer::start(testing::shared().store_config("idempotent")).await;
    let lease = grant(&server, 60).await;
    let first = issue(&server, 3, "node-a/pod", lease).await.unwrap();
    let again = issue(&server, 3, "node-a/pod", lease).await.unwrap();
    assert_eq!(
        first.holder.unwrap().incarnation,
        again.holder.unwrap().incarnation
    );
}

#[tokio::test]
async fn lease_expiry_frees_the_identity_for_incarnation_plus_one() {
    let server = TestServer::start(testing::shared().store_config("expiry")).await;
    let short = grant(&server, 2).await;
    let first = issue(&server, 1, "node-a", short).await.unwrap();
    assert_eq!(first.holder.as_ref().unwrap().incarnation, 1);
    report(&server, 1, 1, "127.0.0.11", true).await.unwrap();
    let long = grant(&server, 60).await;
    // Refused while the first holder's lease lives...
    assert_eq!(
        issue(&server, 1, "node-b", long).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // ...and granted, one incarnation up, once it has expired by itself.
    let second = wait_for("the first lease to expire", DEADLINE, || async {
        issue(&server, 1, "node-b", long).await.ok()
    })
    .await;
    let holder = second.holder.unwrap();
    assert_eq!((holder.holder.as_str(), holder.incarnation), ("node-b", 2));
    // The old incarnation can no longer act for the identity.
    let stale = report(&server, 1, 1, "127.0.0.11", true).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(
        stale.message().contains("stale incarnation 1"),
        "{}",
        stale.message()
    );
    // Keep-alive on the expired lease says it is gone.
    let gone = server
        .leases()
        .await
        .keep_alive_lease(v1::KeepAliveLeaseRequest { lease_id: short })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
}

#[tokio::test]
async fn release_frees_at_once_and_only_the_current_incarnation_may_release() {
    let server = TestServer::start(testing::shared().store_config("release")).await;
    let lease = grant(&server, 60).await;
    issue(&server, 0, "a", lease).await.unwrap();
    let mut identities = server.identities().await;
    let release = |incarnation| v1::ReleaseIdentityRequest {
        r#ref: Some(kubia_ref(0)),
        incarnation,
    };
    let stale = identities.release_identity(release(7)).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(
        identities
            .release_identity(release(1))
            .await
            .unwrap()
            .into_inner()
            .released
    );
    // Releasing twice is harmless.
    assert!(
        !identities
            .release_identity(release(1))
            .await
            .unwrap()
            .into_inner()
            .released
    );
    let next = issue(&server, 0, "b", lease).await.unwrap();
    assert_eq!(next.holder.unwrap().incarnation, 2);
    let state = identities
        .get_identity(v1::GetIdentityRequest {
            r#ref: Some(kubia_ref(0)),
            service_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.last_incarnation, 2);
    assert_eq!(state.holder.unwrap().holder, "b");
}

#[tokio::test]
async fn srv_records_list_exactly_the_ready_pods_and_follow_changes() {
    let server = TestServer::start(testing::shared().store_config("dns")).await;
    create_kubia(&server).await;
    let lease = grant(&server, 60).await;
    for ordinal in 0..3 {
        let id = issue(&server, ordinal, &format!("pod-{ordinal}"), lease)
            .await
            .unwrap();
        let ready = ordinal != 2;
        report(
            &server,
            ordinal,
            id.holder.unwrap().incarnation,
            &format!("127.0.1.{}", 10 + ordinal),
            ready,
        )
        .await
        .unwrap();
    }
    let resolver = server.resolver();
    let expected = vec![
        ("kubia-0.kubia.default.svc.cluster.local.".to_string(), 8080),
        ("kubia-1.kubia.default.svc.cluster.local.".to_string(), 8080),
    ];
    wait_for("SRV to list the two ready pods", DEADLINE, || async {
        (srv(&resolver).await == expected).then_some(())
    })
    .await;
    // A records: the pod, and the service with every ready pod.
    let pod = resolver
        .lookup_ip("kubia-1.kubia.default.svc.cluster.local.")
        .await
        .unwrap();
    assert_eq!(
        pod.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        ["127.0.1.11"]
    );
    let all: BTreeSet<String> = resolver
        .lookup_ip("kubia.default.svc.cluster.local.")
        .await
        .unwrap()
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(
        all,
        BTreeSet::from(["127.0.1.10".to_string(), "127.0.1.11".to_string()])
    );
    // PTR for a pod's address. (Asked on the wire: a stub resolver answers
    // loopback reverse names itself, as RFC 6761 asks.)
    let ptr = server
        .ask("10.1.0.127.in-addr.arpa.", RecordType::PTR)
        .await;
    assert_eq!(
        ptr.answers[0].data.to_string(),
        "kubia-0.kubia.default.svc.cluster.local."
    );
    // kubia-2 becomes ready: it joins the SRV answer.
    report(&server, 2, 1, "127.0.1.12", true).await.unwrap();
    wait_for("kubia-2 to join SRV", DEADLINE, || async {
        (srv(&resolver).await.len() == 3).then_some(())
    })
    .await;
    // kubia-0 is released: it leaves.
    server
        .identities()
        .await
        .release_identity(v1::ReleaseIdentityRequest {
            r#ref: Some(kubia_ref(0)),
            incarnation: 1,
        })
        .await
        .unwrap();
    wait_for("kubia-0 to leave SRV", DEADLINE, || async {
        let now = srv(&resolver).await;
        (now.len() == 2 && now.iter().all(|(t, _)| !t.starts_with("kubia-0"))).then_some(())
    })
    .await;
}

#[tokio::test]
async fn dns_is_authoritative_in_the_zone_and_refuses_outside_it() {
    let server = TestServer::start(testing::shared().store_config("dns-codes")).await;
    create_kubia(&server).await;
    let service_known = || async {
        let answer = server
            .ask("kubia.default.svc.cluster.local.", RecordType::A)
            .await;
        (rcode(&answer) == ResponseCode::NoError).then_some(answer)
    };
    let nodata = wait_for("the service to be known to DNS", DEADLINE, service_known).await;
    assert!(
        nodata.metadata.authoritative && nodata.answers.is_empty(),
        "no ready pods yet: NODATA"
    );
    let unknown = server
        .ask("nothing.default.svc.cluster.local.", RecordType::A)
        .await;
    assert_eq!(rcode(&unknown), ResponseCode::NXDomain);
    assert!(unknown.metadata.authoritative);
    assert_eq!(
        unknown.authorities.len(),
        1,
        "negative answers carry the SOA"
    );
    let outside = server.ask("example.com.", RecordType::A).await;
    assert_eq!(
        rcode(&outside),
        ResponseCode::Refused,
        "never an open resolver"
    );
    assert!(!outside.metadata.recursion_available);
    // TCP answers the same as UDP (through the real resolver, TCP only).
    let lease = grant(&server, 60).await;
    issue(&server, 0, "p", lease).await.unwrap();
    report(&server, 0, 1, "127.0.1.20", true).await.unwrap();
    let resolver = server.resolver();
    wait_for("the pod's A record", DEADLINE, || async {
        resolver
            .lookup_ip("kubia-0.kubia.default.svc.cluster.local.")
            .await
            .ok()
    })
    .await;
}

#[tokio::test]
async fn two_replicas_serve_the_same_answers() {
    let store = testing::shared().store_config("replicas");
    let a = TestServer::start(store.clone()).await;
    let b = TestServer::start(store).await;
    create_kubia(&a).await;
    let lease = grant(&a, 60).await;
    issue(&a, 0, "x", lease).await.unwrap();
    // The identity issued through a is held as far as b is concerned.
    let refused = issue(&b, 0, "y", lease).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    report(&b, 0, 1, "127.0.1.30", true).await.unwrap();
    let expected = vec![("kubia-0.kubia.default.svc.cluster.local.".to_string(), 8080)];
    for server in [&a, &b] {
        let resolver = server.resolver();
        wait_for("both replicas' DNS to agree", DEADLINE, || async {
            (srv(&resolver).await == expected).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_restart_loses_nothing() {
    let store = testing::shared().store_config("restart");
    let first = TestServer::start(store.clone()).await;
    create_kubia(&first).await;
    let lease = grant(&first, 60).await;
    issue(&first, 0, "keeper", lease).await.unwrap();
    report(&first, 0, 1, "127.0.1.40", true).await.unwrap();
    first.stop().await;

    let second = TestServer::start(store).await;
    let service = second
        .services()
        .await
        .get_service(v1::GetServiceRequest {
            namespace: "".into(),
            name: "kubia".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        service.into_inner().spec.unwrap().ports[0].target_port,
        "http"
    );
    let refused = issue(&second, 0, "intruder", lease).await.unwrap_err();
    assert!(
        refused.message().contains("\"keeper\""),
        "{}",
        refused.message()
    );
    let peers = second
        .identities()
        .await
        .list_peers(v1::ListPeersRequest {
            namespace: "default".into(),
            service_name: "kubia".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(
        (
            peers[0].pod_name.as_str(),
            peers[0].address.as_str(),
            peers[0].ready
        ),
        ("kubia-0", "127.0.1.40", true)
    );
    let resolver = second.resolver();
    wait_for("DNS after the restart", DEADLINE, || async {
        (srv(&resolver).await.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn peers_are_the_pods_the_service_selects_in_ordinal_order() {
    let server = TestServer::start(testing::shared().store_config("peers")).await;
    create_kubia(&server).await;
    let lease = grant(&server, 60).await;
    for ordinal in [2, 0, 1] {
        issue(&server, ordinal, "h", lease).await.unwrap();
        report(
            &server,
            ordinal,
            1,
            &format!("127.0.2.{ordinal}"),
            ordinal != 1,
        )
        .await
        .unwrap();
    }
    // A pod of another set, with other labels, is not a peer.
    let mut identities = server.identities().await;
    identities
        .issue_identity(v1::IssueIdentityRequest {
            r#ref: Some(v1::IdentityRef {
                namespace: "default".into(),
                set_name: "other".into(),
                ordinal: 0,
            }),
            service_name: "kubia".into(),
            holder: "h".into(),
            lease_id: lease,
        })
        .await
        .unwrap();
    identities
        .report_endpoint(v1::ReportEndpointRequest {
            r#ref: Some(v1::IdentityRef {
                namespace: "default".into(),
                set_name: "other".into(),
                ordinal: 0,
            }),
            incarnation: 1,
            address: "127.0.2.99".into(),
            ready: true,
            labels: [("app".to_string(), "else".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let peers = identities
        .list_peers(v1::ListPeersRequest {
            namespace: "".into(),
            service_name: "kubia".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .peers;
    let seen: Vec<(String, bool)> = peers.iter().map(|p| (p.fqdn.clone(), p.ready)).collect();
    assert_eq!(
        seen,
        [
            ("kubia-0.kubia.default.svc.cluster.local".to_string(), true),
            ("kubia-1.kubia.default.svc.cluster.local".to_string(), false),
            ("kubia-2.kubia.default.svc.cluster.local".to_string(), true),
        ]
    );
}

fn fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .expect("BadRequest details")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

#[tokio::test]
async fn bad_input_is_refused_field_by_field_and_changes_nothing() {
    let server = TestServer::start(testing::shared().store_config("bad-input")).await;
    create_kubia(&server).await;
    let lease = grant(&server, 60).await;
    issue(&server, 0, "h", lease).await.unwrap();
    let before = all_keys(&server.store).await;

    let mut identities = server.identities().await;
    let bad_issue = identities
        .issue_identity(v1::IssueIdentityRequest {
            r#ref: Some(v1::IdentityRef {
                namespace: "Default".into(),
                set_name: "-web".into(),
                ordinal: -1,
            }),
            service_name: "kubia.x".into(),
            holder: "".into(),
            lease_id: -5,
        })
        .await
        .unwrap_err();
    assert_eq!(
        fields(&bad_issue),
        [
            "ref.namespace",
            "ref.set_name",
            "ref.ordinal",
            "service_name",
            "holder",
            "lease_id"
        ]
    );
    let too_long = identities
        .issue_identity(v1::IssueIdentityRequest {
            r#ref: Some(v1::IdentityRef {
                namespace: "".into(),
                set_name: "a".repeat(62),
                ordinal: 10,
            }),
            service_name: "kubia".into(),
            holder: "h".into(),
            lease_id: lease,
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&too_long), ["ref.set_name"]);
    assert!(too_long.message().contains("63"), "{}", too_long.message());

    let mut bad_report = v1::ReportEndpointRequest {
        r#ref: Some(kubia_ref(0)),
        incarnation: 1,
        address: "300.1.1.1".into(),
        ports: vec![
            v1::EndpointPort {
                name: "http".into(),
                port: 70000,
                protocol: "TCP".into(),
            },
            v1::EndpointPort {
                name: "".into(),
                port: 1,
                protocol: "ICMP".into(),
            },
        ],
        ready: true,
        labels: Default::default(),
    };
    let status = identities
        .report_endpoint(bad_report.clone())
        .await
        .unwrap_err();
    assert_eq!(
        fields(&status),
        [
            "address",
            "ports[0].port",
            "ports[1].name",
            "ports[1].protocol"
        ]
    );
    bad_report.incarnation = 0;
    assert_eq!(
        fields(&identities.report_endpoint(bad_report).await.unwrap_err()),
        ["incarnation"]
    );

    let mut services = server.services().await;
    let mut bad = kubia_service();
    bad.metadata.as_mut().unwrap().name = "kubia".into();
    let spec = bad.spec.as_mut().unwrap();
    spec.cluster_ip = "10.96.0.1".into();
    spec.r#type = "LoadBalancer".into();
    spec.ports[0].port = 0;
    spec.ports[0].protocol = "HTTP".into();
    let status = services
        .apply_service(v1::ApplyServiceRequest { service: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(
        fields(&status),
        [
            "service.spec.cluster_ip",
            "service.spec.type",
            "service.spec.ports[0].protocol",
            "service.spec.ports[0].port"
        ]
    );
    assert!(
        status.message().contains("clusterIP: None"),
        "{}",
        status.message()
    );
    let status = services
        .get_service(v1::GetServiceRequest {
            namespace: "../../etc".into(),
            name: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["namespace"]);
    let status = server
        .leases()
        .await
        .grant_lease(v1::GrantLeaseRequest { ttl_seconds: 0 })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["ttl_seconds"]);

    assert_eq!(
        all_keys(&server.store).await,
        before,
        "refused requests wrote nothing"
    );
}

#[tokio::test]
async fn services_keep_uid_and_count_generations() {
    let server = TestServer::start(testing::shared().store_config("services")).await;
    let mut services = server.services().await;
    let created = services
        .create_service(v1::CreateServiceRequest {
            service: Some(kubia_service()),
        })
        .await
        .unwrap()
        .into_inner();
    let meta = created.metadata.clone().unwrap();
    assert_eq!(meta.generation, 1);
    let again = services
        .create_service(v1::CreateServiceRequest {
            service: Some(kubia_service()),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let mut changed = kubia_service();
    changed.spec.as_mut().unwrap().publish_not_ready_addresses = true;
    let applied = services
        .apply_service(v1::ApplyServiceRequest {
            service: Some(changed.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let applied_meta = applied.metadata.unwrap();
    assert_eq!(
        (applied_meta.uid.as_str(), applied_meta.generation),
        (meta.uid.as_str(), 2)
    );
    // A stale resource version is refused.
    changed.metadata.as_mut().unwrap().resource_version = meta.resource_version.clone();
    let stale = services
        .update_service(v1::UpdateServiceRequest {
            service: Some(changed),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let listed = services
        .list_services(v1::ListServicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.services.len(), 1);
    services
        .delete_service(v1::DeleteServiceRequest {
            namespace: "".into(),
            name: "kubia".into(),
        })
        .await
        .unwrap();
    let gone = services
        .delete_service(v1::DeleteServiceRequest {
            namespace: "".into(),
            name: "kubia".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
}

#[tokio::test]
async fn health_reflection_and_metrics_are_served() {
    let server = TestServer::start(testing::shared().store_config("ops")).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "petset.v1.Identities".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // Both reflection versions list the service.
    for version in ["v1", "v1alpha"] {
        let listed = list_services_via_reflection(&server, version).await;
        assert!(
            listed.contains(&"petset.v1.Identities".to_string()),
            "{version}: {listed:?}"
        );
    }
    // Metrics over plain HTTP/1.1 on the same port.
    grant(&server, 10).await;
    let body = http_get(server.grpc, "/metrics").await;
    assert!(body.contains("petset_requests_total"), "{body}");
}

/// Lists services through one reflection version; the two versions are the
/// same protocol in two packages, hence a macro rather than a generic.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tokio_stream::StreamExt as _;
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        match stream.next().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("unexpected {other:?}"),
        }
    }};
}

async fn list_services_via_reflection(server: &TestServer, version: &str) -> Vec<String> {
    let channel = server.channel().await;
    if version == "v1" {
        list_services!(v1, channel)
    } else {
        list_services!(v1alpha, channel)
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}
