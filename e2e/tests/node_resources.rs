//! Node resources on the README's local stack with real node agents: a
//! burst of pods spreads within each node's capacity, and every address,
//! network namespace and process a pod took comes back when it stops, so
//! the same burst runs again, and again, on the same nodes.

use std::time::Duration;

use petset_e2e::local::{LocalStack, pods_running};
use petset_e2e::{Petctl, binary, metric, run, wait_until};

const BURST: usize = 200;

fn burst_set() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: burst}}
spec:
  serviceName: burst
  replicas: {BURST}
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: burst}}}}
  template:
    metadata: {{labels: {{app: burst}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sleep, "3600"]
"#
    )
}

/// What a node holds for its pods: free pod addresses (the agent's gauge)
/// and pod network namespaces.
fn held(stack: &LocalStack, pod_net: &str) -> Vec<(f64, usize)> {
    let namespaces = run("ip", &["netns", "list"]);
    (1..=3)
        .map(|n| {
            let agent = format!("127.0.0.1:{}", stack.ports.agents + n - 1);
            let free = metric(&agent, "petset_agent_pod_addresses_free").unwrap_or(-1.0);
            let prefix = format!("petset-{pod_net}.{n}.");
            let netns = namespaces
                .lines()
                .filter(|l| l.starts_with(&prefix))
                .count();
            (free, netns)
        })
        .collect()
}

#[test]
fn the_same_burst_twice_on_the_same_nodes_spreads_within_capacity_and_leaks_nothing() {
    // /25 subnets: 125 pod addresses a node (the last is the bridge's), so
    // a second burst of 200 over three nodes needs the first one's
    // addresses back.
    let pod_net = "10.93";
    let stack = LocalStack::start_with(pod_net, 10, &[("PETSET_POD_SUBNET_BITS", "25")]);
    let petctl = Petctl {
        program: binary("petctl"),
        server: stack.scheduler(0),
    };
    let before = held(&stack, pod_net);
    assert!(
        before.iter().all(|(free, _)| *free > 0.0),
        "every agent reports its free addresses: {before:?}"
    );
    let capacity: Vec<i64> = petctl.json(&["get", "nodes"])["items"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            n["status"]["capacity"]["pods"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .expect("a pod capacity")
        })
        .collect();
    assert_eq!(capacity, [110, 110, 110], "min(--max-pods, 125 addresses)");
    for round in 1..=2 {
        petctl.apply(&burst_set());
        let pods = petctl.wait_ready_prefixed("burst-", BURST, Duration::from_secs(300));
        let mut per_node = std::collections::BTreeMap::<String, i64>::new();
        for pod in &pods {
            *per_node.entry(pod.3.clone()).or_default() += 1;
        }
        let (least, most) = (
            per_node.values().min().copied().unwrap_or(0),
            per_node.values().max().copied().unwrap_or(0),
        );
        assert!(
            per_node.len() == 3 && most <= 110 && most - least <= 2,
            "round {round}: spread over the nodes within capacity: {per_node:?}"
        );
        petctl.run(&["delete", "sts", "burst"]);
        wait_until(
            &format!("round {round}: every burst pod gone"),
            Duration::from_secs(180),
            || {
                let left = petctl
                    .pods()
                    .into_iter()
                    .filter(|p| p.0.starts_with("burst-"))
                    .count();
                (left == 0).then_some(())
            },
        );
        // Every address and network namespace back, as before the burst.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut after = held(&stack, pod_net);
        while after != before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            after = held(&stack, pod_net);
        }
        assert_eq!(
            after, before,
            "round {round}: (free addresses, network namespaces) of each node, after the burst and before it"
        );
        let left: Vec<_> = pods_running("sleep")
            .into_iter()
            .filter(|(_, pod, _)| pod.starts_with("burst-"))
            .collect();
        assert!(
            left.is_empty(),
            "round {round}: burst processes left: {left:?}"
        );
    }
}
