//! The README's first command, run as a user would: `scripts/up` brings up
//! etcd, identity-svc, storage-svc and scheduler-svc and runs the example; grpcurl and dig then see what
//! the README says they will; stopping it leaves nothing running.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use petset_e2e::{free_port, repo_root, run};

fn wait_for_file(path: &Path, deadline: Duration, child: &mut std::process::Child) {
    let start = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("scripts/up exited early with {status}");
        }
        assert!(
            start.elapsed() < deadline,
            "scripts/up was not ready within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn scripts_up_serves_every_service_then_stops_cleanly() {
    let stack = tempfile::tempdir().unwrap();
    let (etcd, identity, dns, storage, scheduler) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let mut up = Command::new(repo_root().join("scripts/up"))
        .env("PETSET_STACK_DIR", stack.path())
        .env("PETSET_ETCD_PORT", etcd.to_string())
        .env("PETSET_IDENTITY_PORT", identity.to_string())
        .env("PETSET_DNS_PORT", dns.to_string())
        .env("PETSET_STORAGE_PORT", storage.to_string())
        .env("PETSET_SCHEDULER_PORT", scheduler.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for_file(
        &stack.path().join("ready"),
        Duration::from_secs(300),
        &mut up,
    );
    let addr = format!("127.0.0.1:{identity}");

    // grpcurl lists the identity service and health (reflection v1alpha).
    let listed = run("grpcurl", &["-plaintext", &addr, "list"]);
    for service in [
        "petset.v1.Identities",
        "grpc.health.v1.Health",
        "petset.v1.Services",
        "petset.v1.Leases",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "{service} missing from:\n{listed}"
        );
    }

    // grpcurl lists the storage service; the example's claims are bound to
    // the seed's volumes and attached.
    let storage_addr = format!("127.0.0.1:{storage}");
    let listed = run("grpcurl", &["-plaintext", &storage_addr, "list"]);
    assert!(
        listed.lines().any(|l| l == "petset.v1.Storage"),
        "petset.v1.Storage missing from:\n{listed}"
    );
    let claims = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            r#"{"namespace": "default"}"#,
            &storage_addr,
            "petset.v1.Storage/ListClaims",
        ],
    );
    for (claim, volume) in [("data-kubia-0", "pv-a"), ("data-kubia-1", "pv-b")] {
        assert!(
            claims.contains(&format!(r#""name": "{claim}""#)),
            "{claims}"
        );
        assert!(
            claims.contains(&format!(r#""volumeName": "{volume}""#)),
            "{claims}"
        );
    }
    let attached = run(
        "grpcurl",
        &[
            "-plaintext",
            &storage_addr,
            "petset.v1.Storage/ListAttachments",
        ],
    );
    assert!(
        attached.contains(&format!("{}/storage/static/pv-a", stack.path().display())),
        "{attached}"
    );

    // grpcurl lists the scheduler's services.
    let scheduler_addr = format!("127.0.0.1:{scheduler}");
    let listed = run("grpcurl", &["-plaintext", &scheduler_addr, "list"]);
    for service in [
        "petset.v1.StatefulSets",
        "petset.v1.Pods",
        "petset.v1.Nodes",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "{service} missing from:\n{listed}"
        );
    }

    // An identity can be issued with grpcurl.
    let lease = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            r#"{"ttl_seconds": 30}"#,
            &addr,
            "petset.v1.Leases/GrantLease",
        ],
    );
    let lease_id: String = lease
        .split('"')
        .skip_while(|s| *s != "leaseId")
        .nth(2)
        .unwrap()
        .to_string();
    let request = format!(
        r#"{{"ref": {{"set_name": "web", "ordinal": 0}}, "service_name": "kubia", "holder": "e2e", "lease_id": {lease_id}}}"#
    );
    let issued = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            &request,
            &addr,
            "petset.v1.Identities/IssueIdentity",
        ],
    );
    assert!(
        issued.contains(r#""fqdn": "web-0.kubia.default.svc.cluster.local""#),
        "{issued}"
    );
    assert!(issued.contains(r#""incarnation": "1""#), "{issued}");

    // dig sees the example's ready pods in the SRV record.
    let port = dns.to_string();
    let srv = run(
        "dig",
        &[
            "@127.0.0.1",
            "-p",
            &port,
            "+short",
            "SRV",
            "_http._tcp.kubia.default.svc.cluster.local",
        ],
    );
    let mut targets: Vec<&str> = srv.lines().collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "0 50 8080 kubia-0.kubia.default.svc.cluster.local.",
            "0 50 8080 kubia-1.kubia.default.svc.cluster.local."
        ]
    );
    let refused = run("dig", &["@127.0.0.1", "-p", &port, "example.com"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    let tcp = run(
        "dig",
        &[
            "@127.0.0.1",
            "-p",
            &port,
            "+tcp",
            "+short",
            "kubia-0.kubia.default.svc.cluster.local",
        ],
    );
    assert_eq!(tcp.trim(), "127.0.10.1");

    // Stopping (what Ctrl-C does) leaves no process behind.
    let pids = std::fs::read_to_string(stack.path().join("pids")).unwrap();
    run("kill", &["-INT", &up.id().to_string()]);
    let status = up.wait().unwrap();
    assert!(
        !status.success() || status.code() == Some(0),
        "exited: {status}"
    );
    for pid in pids.lines().filter(|p| !p.is_empty()) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} outlived scripts/up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
