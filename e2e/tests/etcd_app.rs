//! A real clustered application on petset, as Kubernetes' own e2e suite
//! runs them: examples/etcd, a three-member etcd cluster as a StatefulSet
//! on the README's local stack (process runtime, Debian's etcd). Members
//! find each other by their stable names through the cluster DNS; a key
//! written through member 0 is read through member 2; a deleted member
//! comes back with its name and its data and the cluster is whole again; a
//! rolling update of the template replaces one member at a time, and the
//! cluster takes writes all along.

use std::time::{Duration, Instant};

use petset_e2e::etcd::{cluster_seen_from, get, put};
use petset_e2e::local::LocalStack;
use petset_e2e::{Petctl, PodRow, binary, repo_root, wait_until};

const MEMBERS: [&str; 3] = ["etcd-0", "etcd-1", "etcd-2"];
const DEADLINE: Duration = Duration::from_secs(180);

/// The members, once all three are Ready.
fn members(petctl: &Petctl) -> Vec<PodRow> {
    petctl.wait_ready_prefixed("etcd-", 3, DEADLINE)
}

#[test]
fn an_etcd_cluster_runs_as_a_statefulset_and_keeps_its_data() {
    let stack = LocalStack::start("10.85", 10);
    let petctl = Petctl {
        program: binary("petctl"),
        server: stack.scheduler(0),
    };
    let manifest = std::fs::read_to_string(repo_root().join("examples/etcd/etcd.yaml"))
        .expect("examples/etcd");
    petctl.apply(&manifest);
    let pods = members(&petctl);
    let ip = |pods: &[PodRow], name: &str| {
        pods.iter()
            .find(|p| p.0 == name)
            .map(|p| p.2.clone())
            .expect("a member")
    };
    for m in MEMBERS {
        assert_eq!(cluster_seen_from(&ip(&pods, m)), (3, true), "{m}");
    }

    // Written through member 0, read through member 2.
    assert!(put(&ip(&pods, "etcd-0"), "petset", "stateful"));
    assert_eq!(
        get(&ip(&pods, "etcd-2"), "petset").as_deref(),
        Some("stateful")
    );

    // etcd-1 deleted: it comes back with its name and its data (its claim),
    // rejoins, and the cluster is whole.
    let before = petctl.json(&["get", "pod", "etcd-1"])["metadata"]["uid"].clone();
    petctl.run(&["delete", "pod", "etcd-1"]);
    let pods = wait_until("etcd-1 back, all three Ready", DEADLINE, || {
        let pods = members(&petctl);
        let now = petctl.json(&["get", "pod", "etcd-1"])["metadata"]["uid"].clone();
        (now != before).then_some(pods)
    });
    let back = ip(&pods, "etcd-1");
    wait_until("etcd-1 healthy in a cluster of three", DEADLINE, || {
        (cluster_seen_from(&back) == (3, true)).then_some(())
    });
    assert_eq!(get(&back, "petset").as_deref(), Some("stateful"));
    let claims = petctl.run(&["get", "pvc"]);
    assert_eq!(claims.matches("data-etcd-").count(), 3, "{claims}");

    // A rolling update of the template: one member at a time, and the
    // cluster takes a write through some member all along.
    let updated = manifest.replace(
        "        - name: POD_NAME\n",
        "        - name: ETCD_HEARTBEAT_INTERVAL\n          value: \"100\"\n        - name: POD_NAME\n",
    );
    assert_ne!(updated, manifest);
    let revision = |pod: &str| {
        petctl.json(&["get", "pod", pod])["metadata"]["labels"]["controller-revision-hash"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let old_revision = revision("etcd-0");
    petctl.apply(&updated);
    let start = Instant::now();
    let (mut writes, mut refused) = (0, 0);
    loop {
        let rollout = std::process::Command::new(binary("petctl"))
            .args([
                "--server",
                &petctl.server,
                "rollout",
                "status",
                "sts",
                "etcd",
                "--timeout",
                "1",
            ])
            .output()
            .expect("petctl runs");
        let done = rollout.status.success();
        let ready: Vec<PodRow> = petctl
            .pods()
            .into_iter()
            .filter(|p| p.0.starts_with("etcd-") && p.1)
            .collect();
        let wrote = ready
            .iter()
            .any(|p| put(&p.2, "during-rollout", &writes.to_string()));
        writes += 1;
        if !wrote {
            refused += 1;
        }
        if done {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the rollout did not finish");
    }
    assert_eq!(
        refused, 0,
        "{refused} of {writes} writes found no member to take them"
    );
    let pods = members(&petctl);
    let new_revision = revision("etcd-0");
    assert_ne!(new_revision, old_revision);
    for m in MEMBERS {
        assert_eq!(revision(m), new_revision, "{m} was updated");
        let at = ip(&pods, m);
        assert_eq!(cluster_seen_from(&at), (3, true), "{m}");
        assert_eq!(get(&at, "petset").as_deref(), Some("stateful"), "{m}");
    }
}
