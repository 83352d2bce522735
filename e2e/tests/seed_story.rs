//! The seed's story, end to end, with the real binaries as a user runs them:
//! `scripts/up` brings up etcd, the three services and three node agents and
//! applies the kubia example; then petctl, curl, dig and grpcurl replay the
//! seed: ordered start, data on a pod's own volume, scale down and up with
//! the claim kept, DNS SRV records of the ready pods, a killed process
//! restarted, a killed node agent's pods running again elsewhere, and the
//! claims kept after the set is deleted. Stopping leaves nothing running.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use petset_e2e::local::{LocalStack, Ports, Resume, Sampler, alive, process_of, processes};
use petset_e2e::{Petctl, PodRow, binary, curl, free_port, http, metric, run};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

fn wait_until<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    petset_e2e::wait_until(what, DEADLINE, check)
}

struct Stack {
    local: LocalStack,
    server: String,
    dns: u16,
}

impl Stack {
    fn petctl(&self, args: &[&str]) -> String {
        self.client().run(args)
    }

    fn json(&self, args: &[&str]) -> Value {
        self.client().json(args)
    }

    fn client(&self) -> Petctl {
        Petctl {
            program: binary("petctl"),
            server: self.server.clone(),
        }
    }

    /// Pods by name: (ready, podIP, node, restarts).
    fn pods(&self) -> Vec<PodRow> {
        self.client().pods()
    }

    fn wait_ready(&self, names: &[&str]) -> Vec<PodRow> {
        self.client().wait_ready(names, DEADLINE)
    }

    fn srv(&self) -> Vec<String> {
        let out = run(
            "dig",
            &[
                "@127.0.0.1",
                "-p",
                &self.dns.to_string(),
                "+short",
                "SRV",
                "_http._tcp.kubia.default.svc.cluster.local",
            ],
        );
        let mut targets: Vec<String> = out
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
            .collect();
        targets.sort();
        targets
    }
}

fn pod_ip<'a>(pods: &'a [PodRow], name: &str) -> &'a PodRow {
    find_pod(pods, name).unwrap_or_else(|| panic!("pod {name} is not in {pods:?}"))
}

/// A pod by name, if it exists now (a moving pod is briefly gone).
fn find_pod<'a>(pods: &'a [PodRow], name: &str) -> Option<&'a PodRow> {
    pods.iter().find(|p| p.0 == name)
}

#[test]
fn the_seed_story_with_the_real_binaries() {
    let local = LocalStack::start("10.77", 3);
    let Ports {
        etcd,
        identity,
        dns,
        storage,
        schedulers: [scheduler, scheduler_2],
        ..
    } = local.ports.clone();
    let mut stack = Stack {
        server: local.scheduler(0),
        local,
        dns,
    };

    // Every service answers grpcurl (reflection v1alpha) and health.
    for (port, service) in [
        (scheduler, "petset.v1.StatefulSets"),
        (identity, "petset.v1.Identities"),
        (storage, "petset.v1.Storage"),
    ] {
        let listed = run(
            "grpcurl",
            &["-plaintext", &format!("127.0.0.1:{port}"), "list"],
        );
        assert!(
            listed.lines().any(|l| l == service) && listed.contains("grpc.health.v1.Health"),
            "{listed}"
        );
    }

    // kubia with 2 replicas: kubia-0 was Ready before kubia-1 was created.
    let two = stack.wait_ready(&["kubia-0", "kubia-1"]);
    let pods = stack.json(&["get", "pods"]);
    let item = |name: &str| {
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .unwrap()
            .clone()
    };
    let ready0 = item("kubia-0")["status"]["conditions"][0]["lastTransitionTime"]
        .as_str()
        .unwrap()
        .to_string();
    let created1 = item("kubia-1")["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ready0 <= created1,
        "kubia-0 Ready at {ready0}, kubia-1 created at {created1}"
    );
    assert_ne!(
        pod_ip(&two, "kubia-0").3,
        pod_ip(&two, "kubia-1").3,
        "spread over nodes"
    );
    // Metrics: the leader's controller, the etcd calls under it, and an
    // agent's lease renewals.
    let leader = stack
        .local
        .scheduler(wait_until("a leader", || stack.local.leader()));
    let leader_metric =
        |series: &str| metric(&leader, series).unwrap_or_else(|| panic!("{series} on {leader}"));
    assert!(leader_metric("petset_pods{phase=\"Running\"}") >= 2.0);
    assert!(leader_metric("petset_controller_reconcile_seconds_count") >= 1.0);
    assert!(leader_metric("petset_controller_queue_depth") >= 0.0);
    assert!(leader_metric("petset_etcd_request_duration_seconds_count{op=\"txn\"}") >= 1.0);
    let agent_1 = format!("127.0.0.1:{}", stack.local.ports.agents);
    wait_until("node-1 to report a lease renewal", || {
        metric(
            &agent_1,
            "petset_agent_lease_renew_seconds_count{ok=\"true\"}",
        )
        .filter(|n| *n >= 1.0)
    });
    // Logs written to files carry no terminal colour codes.
    for log in ["scheduler-svc.log", "node-1.log", "storage-svc.log"] {
        let text = std::fs::read_to_string(stack.local.dir.path().join(log)).unwrap();
        assert!(
            !text.is_empty() && !text.contains('\u{1b}'),
            "{log} has ANSI codes"
        );
    }
    assert_eq!(
        stack.srv(),
        [
            "kubia-0.kubia.default.svc.cluster.local.",
            "kubia-1.kubia.default.svc.cluster.local."
        ]
    );
    // DNS answers every query without a log line per query.
    let identity_log =
        std::fs::read_to_string(stack.local.dir.path().join("identity-svc.log")).unwrap();
    assert!(
        !identity_log.contains("query:"),
        "identity-svc logs each DNS query"
    );

    // POST to kubia-1: the data goes to its own volume.
    let ip1 = pod_ip(&two, "kubia-1").2.clone();
    let stored = curl(&[
        "-X",
        "POST",
        "-d",
        "Hey there! This greeting was submitted to kubia-1.",
        &format!("http://{ip1}:8080/"),
    ])
    .unwrap();
    assert_eq!(stored, "Data stored on pod kubia-1\n");
    let claim1 = stack.json(&["get", "pvc", "data-kubia-1"]);
    let (uid1, volume1) = (
        claim1["metadata"]["uid"].clone(),
        claim1["spec"]["volumeName"].clone(),
    );

    // Scale to 1: kubia-1 goes; data-kubia-1 stays Bound.
    stack.petctl(&["scale", "sts", "kubia", "--replicas=1"]);
    stack.wait_ready(&["kubia-0"]);
    let kept = stack.json(&["get", "pvc", "data-kubia-1"]);
    assert_eq!(kept["status"]["phase"], "Bound");
    wait_until("DNS to drop kubia-1", || {
        (stack.srv() == ["kubia-0.kubia.default.svc.cluster.local."]).then_some(())
    });

    // Scale to 3: kubia-1 is back on the same claim and volume, with its
    // data; kubia-2 gets a new claim.
    stack.petctl(&["scale", "sts", "kubia", "--replicas=3"]);
    let three = stack.wait_ready(&["kubia-0", "kubia-1", "kubia-2"]);
    let again = stack.json(&["get", "pvc", "data-kubia-1"]);
    assert_eq!(
        (
            again["metadata"]["uid"].clone(),
            again["spec"]["volumeName"].clone()
        ),
        (uid1, volume1.clone())
    );
    let ip1 = pod_ip(&three, "kubia-1").2.clone();
    let answer = curl(&[&format!("http://{ip1}:8080/")]).unwrap();
    assert_eq!(
        answer,
        "You've hit kubia-1\nData stored on this pod: Hey there! This greeting was submitted to kubia-1.\n"
    );
    let claim2 = stack.json(&["get", "pvc", "data-kubia-2"]);
    assert_eq!(claim2["status"]["phase"], "Bound");
    assert_ne!(claim2["spec"]["volumeName"], volume1);
    wait_until("DNS to list the three ready pods", || {
        (stack.srv()
            == [
                "kubia-0.kubia.default.svc.cluster.local.",
                "kubia-1.kubia.default.svc.cluster.local.",
                "kubia-2.kubia.default.svc.cluster.local.",
            ])
        .then_some(())
    });

    // The seed's access through the API: `petctl proxy`, then the pod and
    // service paths.
    let proxy_port = free_port();
    let mut proxy = Command::new(binary("petctl"))
        .args([
            "--server",
            &stack.server,
            "proxy",
            "--port",
            &proxy_port.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{proxy_port}/api/v1/namespaces/default");
    let hit = wait_until("petctl proxy to answer", || {
        let (code, body) = http(&[&format!("{api}/pods/kubia-0/proxy/")]);
        (code == 200).then_some(body)
    });
    assert!(hit.starts_with("You've hit kubia-0\n"), "{hit}");
    let (code, body) = http(&[
        "-X",
        "POST",
        "-d",
        "Hey there! This greeting was submitted to kubia-0.",
        &format!("{api}/pods/kubia-0/proxy/"),
    ]);
    assert_eq!((code, body.as_str()), (200, "Data stored on pod kubia-0\n"));
    let (_, body) = http(&[&format!("{api}/pods/kubia-0:8080/proxy/")]);
    assert!(
        body.ends_with(
            "Data stored on this pod: Hey there! This greeting was submitted to kubia-0.\n"
        ),
        "{body}"
    );
    let mut reached = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let (code, body) = http(&[&format!("{api}/services/kubia/proxy/")]);
        assert_eq!(code, 200, "{body}");
        reached.insert(body.lines().next().unwrap_or("").to_string());
    }
    assert_eq!(
        reached.into_iter().collect::<Vec<_>>(),
        [
            "You've hit kubia-0",
            "You've hit kubia-1",
            "You've hit kubia-2"
        ]
    );
    // Paths that try to leave the pod they name.
    for (path, want) in [
        ("pods/kubia-9/proxy/", 404),
        ("services/nothing/proxy/", 404),
        ("pods/127.0.0.1/proxy/", 400),
        ("pods/127.0.0.1:22/proxy/", 400),
        ("pods/kubia-0/proxy/a%2Fb", 400),
        ("pods/kubia-0/proxy/%2e%2e/%2e%2e/kubia-1/proxy/", 400),
    ] {
        let (code, body) = http(&["--path-as-is", &format!("{api}/{path}")]);
        assert_eq!(code, want, "{path}: {body}");
    }
    let (code, _) = http(&[
        "--path-as-is",
        &format!("{api}/pods/kubia-0/proxy/../../kubia-1/proxy/"),
    ]);
    assert_eq!(code, 400, "raw '..'");
    let (code, body) = http(&[&format!("{api}/pods/kubia-0/proxy/http://example.com/")]);
    assert!(
        code == 200 && body.starts_with("You've hit kubia-0"),
        "an absolute URL is only a path on kubia-0: {code} {body}"
    );
    // A pod that runs but is not ready: 503 with the reason.
    let broken = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: broken}\nspec:\n  serviceName: broken\n  replicas: 1\n  selector: {matchLabels: {app: broken}}\n  template:\n    metadata: {labels: {app: broken}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: app\n        command: [sleep, '3600']\n        readinessProbe: {exec: {command: ['false']}, periodSeconds: 1}\n        livenessProbe: {exec: {command: [test, -e, /tmp/petset-e2e-never]}, periodSeconds: 1, failureThreshold: 2, initialDelaySeconds: 2}\n";
    stack.client().apply(broken);
    let (code, body) = wait_until("broken-0 to run, not ready", || {
        let (code, body) = http(&[&format!("{api}/pods/broken-0/proxy/")]);
        body.contains("not ready").then_some((code, body))
    });
    assert_eq!(code, 503, "{body}");
    // Its liveness probe fails: the agent kills and starts it again
    // (restartPolicy Always), and the restarts are reported.
    wait_until("broken-0 to be restarted by its liveness probe", || {
        let pods = stack.pods();
        (find_pod(&pods, "broken-0")?.4 >= 1).then_some(())
    });
    stack.petctl(&["delete", "sts", "broken"]);
    wait_until("broken-0 to be gone", || {
        (!stack.pods().iter().any(|p| p.0 == "broken-0")).then_some(())
    });
    let _ = proxy.kill();
    let _ = proxy.wait();

    // The default StorageClass: a set whose claim template names no class
    // (most real manifests) becomes Ready with no other step.
    assert!(
        stack
            .client()
            .has_default_class("standard", "petset.io/shared"),
        "{}",
        stack.petctl(&["get", "sc"])
    );
    let cache = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: cache}\nspec:\n  serviceName: cache\n  replicas: 1\n  selector: {matchLabels: {app: cache}}\n  template:\n    metadata: {labels: {app: cache}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: app\n        command: [sleep, '3600']\n        volumeMounts: [{name: data, mountPath: /data}]\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec:\n      accessModes: [ReadWriteOnce]\n      resources: {requests: {storage: 1Mi}}\n";
    // A reader that went away (`petctl get po | head`): petctl stops
    // quietly, as kubectl does, rather than panicking on the closed pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(binary("petctl"))
        .args(["--server", &stack.server, "get", "pods", "-o", "wide"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // kubectl's words: created, then unchanged when applied again as is.
    assert_eq!(
        stack.client().apply(cache).trim(),
        "statefulset.apps/cache created"
    );
    assert_eq!(
        stack.client().apply(cache).trim(),
        "statefulset.apps/cache unchanged"
    );
    wait_until("cache-0 Ready on a claim of the default class", || {
        let ready = find_pod(&stack.pods(), "cache-0")?.1;
        ready.then_some(())
    });
    let claim = stack.json(&["get", "pvc", "data-cache-0"]);
    assert_eq!(
        (
            &claim["spec"]["storageClassName"],
            &claim["status"]["phase"]
        ),
        (&Value::from("standard"), &Value::from("Bound")),
        "{claim}"
    );
    // Label selectors, as kubectl's `-l`.
    let names = |selector: &str| -> Vec<String> {
        stack.json(&["get", "pods", "-l", selector])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("app=cache"), ["cache-0"]);
    assert_eq!(names("app in (cache, nothing)"), ["cache-0"]);
    let kubia = names("app!=cache,statefulset.kubernetes.io/pod-name");
    assert!(
        !kubia.is_empty() && kubia.iter().all(|n| n.starts_with("kubia-")),
        "{kubia:?}"
    );
    assert!(names("!app").is_empty());
    // rollout restart stamps the template (kubectl's restartedAt): cache-0
    // is replaced at a new revision; rollout undo puts the first template
    // back, and cache-0 runs at the first revision again.
    let cache_0 = || {
        stack.json(&["get", "pods", "-l", "app=cache"])["items"]
            .as_array()
            .and_then(|items| items.first().cloned())
    };
    let revision_of = |pod: &Value| {
        pod["metadata"]["labels"]["controller-revision-hash"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let ready_at = |revision: &str, same: bool| {
        let pod = cache_0()?;
        let ready = pod["status"]["conditions"][0]["status"] == "True"
            && pod["metadata"]["deletionTimestamp"].is_null();
        (ready && (revision_of(&pod) == revision) == same).then(|| revision_of(&pod))
    };
    let first = revision_of(&cache_0().expect("cache-0"));
    assert_eq!(
        stack.petctl(&["rollout", "restart", "sts", "cache"]).trim(),
        "statefulset.apps/cache restarted"
    );
    let restarted = wait_until("cache-0 replaced at a new revision", || {
        ready_at(&first, false)
    });
    assert_ne!(restarted, first);
    assert_eq!(
        stack.petctl(&["rollout", "undo", "sts", "cache"]).trim(),
        "statefulset.apps/cache rolled back"
    );
    wait_until("cache-0 back at the first revision", || {
        ready_at(&first, true)
    });
    stack.petctl(&["delete", "sts", "cache"]);
    wait_until("cache-0 to be gone", || {
        (!stack.pods().iter().any(|p| p.0 == "cache-0")).then_some(())
    });
    stack.petctl(&["delete", "pvc", "data-cache-0"]);

    // Killing a pod's process: the agent starts it again.
    let ip0 = pod_ip(&three, "kubia-0").2.clone();
    let pid = process_of("kubia-0", &ip0).expect("kubia-0 runs as a process");
    run("kill", &["-KILL", &pid]);
    wait_until("kubia-0 restarted", || {
        let pods = stack.pods();
        let p = find_pod(&pods, "kubia-0")?;
        (p.4 >= 1
            && p.1
            && curl(&[&format!("http://{ip0}:8080/")])
                .is_some_and(|a| a.starts_with("You've hit kubia-0")))
        .then_some(())
    });
    assert!(
        stack
            .petctl(&["logs", "kubia-0"])
            .contains("Kubia server starting")
    );

    // Killing kubia-1's node agent: kubia-1 stops with it, and once the
    // node's lease expired it runs again on another node, on its volume.
    let node1 = pod_ip(&three, "kubia-1").3.clone();
    let agent =
        std::fs::read_to_string(stack.local.dir.path().join(format!("{node1}.pid"))).unwrap();
    run("kill", &["-KILL", agent.trim()]);
    wait_until("kubia-1's process to stop with its agent", || {
        process_of("kubia-1", &ip1).is_none().then_some(())
    });
    let moved = wait_until("kubia-1 Ready on another node", || {
        let pods = stack.pods();
        let p = find_pod(&pods, "kubia-1")?.clone();
        (p.1 && p.3 != node1).then_some(p)
    });
    let answer = curl(&[&format!("http://{}:8080/", moved.2)]).unwrap();
    assert!(answer.contains("submitted to kubia-1"), "{answer}");
    let nodes = stack.petctl(&["get", "nodes"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with(&node1) && l.contains("NotReady")),
        "{nodes}"
    );

    // A hung agent (SIGSTOP, as a kubelet stuck in the kernel or frozen
    // by its host): it renews nothing and kills nothing, but each pod's
    // petset-shim kills its container at the node's lease deadline (two
    // thirds of the TTL after the last confirmed renewal), before the lease
    // can expire and the pod be placed elsewhere. A sampler reads the
    // process table every few milliseconds all along: never two copies.
    let now = stack.pods();
    let hung = pod_ip(&now, "kubia-0").clone();
    let old = process_of("kubia-0", &hung.2).expect("kubia-0 runs");
    let agent =
        std::fs::read_to_string(stack.local.dir.path().join(format!("{}.pid", hung.3))).unwrap();
    let sampler = Sampler::start("10.77");
    let resume = Resume(agent.trim().to_string());
    run("kill", &["-STOP", &resume.0]);
    let stopped = Instant::now();
    let moved = wait_until("kubia-0 Ready on another node", || {
        let pods = stack.pods();
        let p = find_pod(&pods, "kubia-0")?.clone();
        (p.1 && p.3 != hung.3).then_some(p)
    });
    eprintln!(
        "kubia-0 Ready on {} {:?} after its agent on {} was stopped (node lease TTL 3 s)",
        moved.3,
        stopped.elapsed(),
        hung.3
    );
    assert!(!alive(&old), "the old copy of kubia-0 still runs");
    let answer = curl(&[&format!("http://{}:8080/", moved.2)]).unwrap();
    assert!(answer.starts_with("You've hit kubia-0"), "{answer}");
    let seen = sampler.stop();
    assert!(
        seen.samples > 100,
        "the sampler looked {} times",
        seen.samples
    );
    assert!(seen.doubled().is_empty(), "two copies at once: {seen:?}");
    assert_eq!(seen.most.get("kubia-0"), Some(&1), "{seen:?}");
    // Resumed, the agent finds its lease gone, counts the pods it fenced,
    // and registers again.
    drop(resume);
    wait_until("the resumed node to be Ready again", || {
        let nodes = stack.petctl(&["get", "nodes"]);
        nodes
            .lines()
            .any(|l| l.starts_with(&format!("{} ", hung.3)) && l.contains(" Ready "))
            .then_some(())
    });
    let hung_number: u16 = hung.3.trim_start_matches("node-").parse().unwrap();
    let hung_agent = format!("127.0.0.1:{}", stack.local.ports.agents + hung_number - 1);
    assert!(
        metric(&hung_agent, "petset_agent_fence_kills_total").is_some_and(|n| n >= 1.0),
        "the resumed agent counts the pods it fenced"
    );

    let incarnations = |stack: &Stack| -> std::collections::BTreeMap<String, u64> {
        stack.json(&["get", "pods"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let name = p["metadata"]["name"].as_str().unwrap().to_string();
                let n = p["metadata"]["annotations"]["petset.io/incarnation"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                (name, n)
            })
            .collect()
    };
    // Each pod's process, by pod name.
    let pod_processes = |stack: &Stack| -> Vec<(String, Option<String>)> {
        stack
            .pods()
            .iter()
            .map(|p| (p.0.clone(), process_of(&p.0, &p.2)))
            .collect()
    };

    // SIGKILL of a scheduler replica, the follower and then the leader,
    // while the other runs: no pod restarts. The agents renew their leases
    // through the replica that answers; the other replica takes over the
    // lead within its lease TTL (2 s). Each kill is watched for three node
    // lease TTLs, long enough for any node whose renewals failed to have
    // fenced its pods.
    let servers = [
        format!("127.0.0.1:{scheduler}"),
        format!("127.0.0.1:{scheduler_2}"),
    ];
    let scheduler_args = |i: usize, http: u16| -> Vec<String> {
        vec![
            "--id".into(),
            format!("scheduler-{}", i + 1),
            "--etcd-endpoints".into(),
            format!("http://127.0.0.1:{etcd}"),
            "--grpc-addr".into(),
            servers[i].clone(),
            "--http-addr".into(),
            format!("127.0.0.1:{http}"),
            "--identity-addr".into(),
            format!("http://127.0.0.1:{identity}"),
            "--storage-addr".into(),
            format!("http://127.0.0.1:{storage}"),
        ]
    };
    let mut restarted: Vec<petset_core::testing::Tied> = Vec::new();
    let node_ttl = Duration::from_secs(3);
    for role in ["follower", "leader"] {
        let leading = wait_until("one scheduler replica to lead", || stack.local.leader());
        let victim = if role == "leader" {
            leading
        } else {
            1 - leading
        };
        let survivor = 1 - victim;
        let nodes_before = stack.client().ready_nodes();
        let before = (incarnations(&stack), pod_processes(&stack));
        assert!(before.1.iter().all(|(_, pid)| pid.is_some()), "{before:?}");
        // The first replica started by scripts/up, or its restart.
        let pid = processes(&["scheduler-svc", &format!("--grpc-addr {}", servers[victim])]);
        assert_eq!(pid.len(), 1, "{pid:?}");
        let pid = pid[0].clone();
        run("kill", &["-KILL", &pid]);
        let killed = Instant::now();
        stack.server = servers[survivor].clone();
        wait_until(
            &format!("three node lease TTLs after the {role} (pid {pid}) was killed"),
            || {
                (killed.elapsed() >= node_ttl * 3
                    && stack.client().ready_nodes() == nodes_before
                    && stack.local.leader() == Some(survivor))
                .then_some(())
            },
        );
        let after = (incarnations(&stack), pod_processes(&stack));
        assert_eq!(before, after, "killing the {role} restarted no pod");
        // The killed replica comes back (as a restart or an upgrade would).
        let http_port = free_port();
        restarted.push(petset_core::testing::Tied::spawn(
            &binary("scheduler-svc"),
            &scheduler_args(victim, http_port),
            &stack
                .local
                .dir
                .path()
                .join(format!("scheduler-{}-again.log", victim + 1)),
        ));
        let back = servers[victim].clone();
        wait_until("the restarted replica to answer", || {
            Command::new(binary("petctl"))
                .args(["--server", &back, "get", "nodes"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        });
    }

    // Fencing: with every scheduler replica gone, no agent can renew its
    // node's lease, and each kills its pods itself before the lease can
    // expire (so that the identities are never run twice once another
    // scheduler places them again).
    let before = incarnations(&stack);
    let remaining = processes(&["scheduler-svc", "--etcd-endpoints"]);
    assert_eq!(remaining.len(), 2, "{remaining:?}");
    for pid in &remaining {
        run("kill", &["-KILL", pid]);
    }
    wait_until("every pod to be stopped by its own agent", || {
        processes(&[binary("kubia-pet").to_str().unwrap()])
            .iter()
            .all(|pid| {
                let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                !String::from_utf8_lossy(&env).contains("POD_IP=10.77.")
            })
            .then_some(())
    });
    // A scheduler comes back: the agents register again and the pods run
    // again, each as a new incarnation.
    drop(restarted);
    stack.server = servers[0].clone();
    let mut scheduler_again = petset_core::testing::Tied::spawn(
        &binary("scheduler-svc"),
        &scheduler_args(0, free_port()),
        &stack.local.dir.path().join("scheduler-svc-again.log"),
    );
    wait_until("the new scheduler-svc to answer", || {
        Command::new(binary("petctl"))
            .args(["--server", &stack.server, "get", "nodes"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    });
    wait_until("the pods to run again as new incarnations", || {
        let after = incarnations(&stack);
        let renewed = before
            .iter()
            .all(|(name, n)| after.get(name).is_some_and(|m| m > n));
        let ready = stack.pods().iter().filter(|p| p.1).count() == 3;
        (renewed && ready).then_some(())
    });

    // Deleting the set keeps the claims.
    stack.petctl(&["delete", "sts", "kubia"]);
    wait_until("the set and its pods to be gone", || {
        let sets = stack.json(&["get", "sts"]);
        (sets["items"].as_array().unwrap().is_empty() && stack.pods().is_empty()).then_some(())
    });
    let claims = stack.json(&["get", "pvc"]);
    let phases: Vec<&str> = claims["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"]["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["Bound", "Bound", "Bound"]);

    // Stopping (what Ctrl-C or SIGTERM does) leaves no process behind.
    scheduler_again.stop();
    let pids = std::fs::read_to_string(stack.local.dir.path().join("pids")).unwrap();
    stack.local.stop();
    for pid in pids.lines().filter(|p| !p.is_empty()) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} outlived scripts/up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(
        process_of("kubia-0", &ip0).is_none(),
        "no pod outlives the stack"
    );
}
