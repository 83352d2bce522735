//! The compose stack, end to end, as a user runs it: `scripts/images` builds
//! every image offline, `docker compose up` (or `docker-compose up`) starts
//! deploy/docker-compose.yaml (three etcd members, two scheduler replicas,
//! identity-svc, storage-svc, three Docker-runtime node agents) under a
//! project of the test's own, and petctl on the host replays the seed:
//! apply, ordered start, data stored through the API proxy, peers found
//! through the cluster DNS from inside a pod, pod logs, `petctl exec`
//! through the engine (hostname, input, exit code), exec probes run inside
//! a container (readiness follows `petctl exec`, and a liveness failure
//! restarts it), scale up. Node faults, 3 trials each with a witness
//! sampling every kubia-pet process: the agent hung (SIGSTOP), the node
//! and its pods paused, the node disconnected from the network: kubia-0
//! runs on another node, never two copies at once; an etcd follower
//! killed: no pod restarts. Then the leading scheduler container is
//! stopped and the other takes over; a node
//! container is killed and its pod runs again on another node once the
//! node's lease has expired, with the data on its shared volume; the etcd
//! example runs as a three-member cluster on the remaining nodes; `down`
//! leaves no container, pod, network or volume behind.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use petset_e2e::etcd::{cluster_seen_from, get, put};
use petset_e2e::local::Sampler;
use petset_e2e::{Petctl, binary, free_port, http, leads, repo_root, run, wait_until};

const DEADLINE: Duration = Duration::from_secs(120);
const TAG: &str = "e2e";
/// Trials of each fault.
const TRIALS: usize = 3;
/// The node lease TTL the stack runs with, seconds.
const LEASE_TTL: u64 = 4;

/// A fault of one node container.
#[derive(Debug, Clone, Copy)]
enum NodeFault {
    /// Its agent SIGSTOPped.
    Hung,
    /// It and its pods paused (`docker pause`).
    Paused,
    /// It disconnected from the stack's network.
    Cut,
}

/// How a [`NodeFault`] is undone; also undone when dropped (a failing
/// test), so that the stack can stop.
struct Heal(Vec<Vec<String>>);

impl Heal {
    fn heal(mut self) {
        self.undo();
    }

    fn undo(&mut self) {
        for command in std::mem::take(&mut self.0) {
            let _ = Command::new(&command[0]).args(&command[1..]).status();
        }
    }
}

impl Drop for Heal {
    fn drop(&mut self) {
        self.undo();
    }
}

impl NodeFault {
    /// Injects the fault into node container `container` (on `network`).
    fn inject(self, container: &str, network: &str) -> Heal {
        let command = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        match self {
            NodeFault::Hung => {
                let agent = agent_pid(container);
                run("kill", &["-STOP", &agent]);
                Heal(vec![command(&["kill", "-CONT", &agent])])
            }
            NodeFault::Paused => {
                let mut all = vec![container.to_string()];
                all.extend(containers(&[format!("petset.io/sandbox={container}")]));
                for c in &all {
                    // A pod container may have ended meanwhile.
                    let _ = Command::new("docker").args(["pause", c]).status();
                }
                // The node container first: its fence wakes overdue and
                // kills the pods before they are thawed.
                Heal(
                    all.iter()
                        .map(|c| command(&["docker", "unpause", c]))
                        .collect(),
                )
            }
            NodeFault::Cut => {
                let ip = address_on(container, network);
                run("docker", &["network", "disconnect", network, container]);
                Heal(vec![command(&[
                    "docker", "network", "connect", "--ip", &ip, network, container,
                ])])
            }
        }
    }
}

/// The address of container `container` on network `network`.
fn address_on(container: &str, network: &str) -> String {
    let template = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    run("docker", &["inspect", "-f", &template, container])
        .trim()
        .to_string()
}

/// The one network of container `container` (the project's).
fn project_network(container: &str) -> String {
    let names = run(
        "docker",
        &[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            container,
        ],
    );
    let names: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(names.len(), 1, "{container} is on {names:?}");
    names[0].to_string()
}

/// The host pid of the node agent in compose container `container` (the
/// child of its init).
fn agent_pid(container: &str) -> String {
    let init = run("docker", &["inspect", "-f", "{{.State.Pid}}", container]);
    let init = init.trim();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .expect("the container's init runs");
    children
        .split_whitespace()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "node-agent")
        })
        .unwrap_or_else(|| panic!("no node-agent under {container}'s init ({init}): {children:?}"))
        .to_string()
}

/// A set whose probes are commands run inside the container (the agent's
/// image has a shell, and the example program to run).
const PROBE_SET: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: probe
spec:
  clusterIP: None
  selector:
    app: probe
  ports:
  - name: http
    port: 8080
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: probe
spec:
  serviceName: probe
  replicas: 1
  selector:
    matchLabels:
      app: probe
  template:
    metadata:
      labels:
        app: probe
    spec:
      containers:
      - name: app
        image: petset/node-agent:TAG
        command: ["/opt/petset/programs/kubia-pet"]
        readinessProbe:
          exec:
            command: ["/bin/sh", "-c", "test -e /tmp/ready"]
          periodSeconds: 1
        livenessProbe:
          exec:
            command: ["/bin/sh", "-c", "test ! -e /tmp/die"]
          periodSeconds: 1
          failureThreshold: 1
"#;

/// `docker compose` when the plugin is there, else `docker-compose`
/// (`PETSET_COMPOSE` overrides, e.g. `docker-compose`).
fn compose_tool() -> Vec<String> {
    if let Ok(tool) = std::env::var("PETSET_COMPOSE") {
        return tool.split_whitespace().map(str::to_string).collect();
    }
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// A /16 no Docker network uses: `10.N`.
fn free_network() -> String {
    let ids = run("docker", &["network", "ls", "-q"]);
    let mut used = BTreeSet::new();
    for id in ids.split_whitespace() {
        let subnets = run(
            "docker",
            &[
                "network",
                "inspect",
                "--format",
                "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
                id,
            ],
        );
        used.extend(subnets.split_whitespace().map(str::to_string));
    }
    (77..250)
        .map(|n| format!("10.{n}"))
        .find(|net| !used.iter().any(|s| s.starts_with(&format!("{net}."))))
        .expect("a free 10.N.0.0/16")
}

/// One compose project; `down` when dropped, so a failed run leaves
/// nothing behind either.
struct Project {
    tool: Vec<String>,
    name: String,
    env: Vec<(String, String)>,
    // Removed after `down` (the pods' volumes live there).
    _data: tempfile::TempDir,
}

impl Project {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.tool[0]);
        c.args(&self.tool[1..])
            .args(["-p", &self.name, "-f"])
            .arg(repo_root().join("deploy/docker-compose.yaml"))
            .args(args)
            .envs(self.env.iter().cloned());
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("compose runs");
        assert!(
            out.status.success(),
            "compose {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The container ID of a service.
    fn container(&self, service: &str) -> String {
        self.run(&["ps", "-q", service]).trim().to_string()
    }

    fn logs(&self) -> String {
        self.command(&["logs", "--no-color", "--tail", "40"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("compose logs (last lines of each):\n{}", self.logs());
        }
        let _ = self
            .command(&["down", "-v", "--remove-orphans", "-t", "20"])
            .output();
    }
}

/// Which scheduler replica leads, from each one's `/metrics`.
fn leader(ports: &[(&str, u16)]) -> Option<String> {
    ports
        .iter()
        .find(|(_, port)| leads(&format!("127.0.0.1:{port}")))
        .map(|(service, _)| service.to_string())
}

/// Containers (running or not) with all of `labels`.
fn containers(labels: &[String]) -> Vec<String> {
    let mut args = vec!["ps", "-aq"];
    let filters: Vec<String> = labels.iter().map(|l| format!("label={l}")).collect();
    for f in &filters {
        args.extend(["--filter", f]);
    }
    run("docker", &args)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_seed_story_on_the_compose_stack() {
    // The images, built offline.
    run(repo_root().join("scripts/images").to_str().unwrap(), &[TAG]);
    let images = run(
        "docker",
        &[
            "images",
            "--format",
            "{{.Repository}}",
            "--filter",
            &format!("reference=petset/*:{TAG}"),
        ],
    );
    for image in [
        "etcd",
        "identity-svc",
        "storage-svc",
        "scheduler-svc",
        "node-agent",
        "kubia-pet",
    ] {
        assert!(
            images.lines().any(|l| l == format!("petset/{image}")),
            "petset/{image}:{TAG} was not built: {images}"
        );
    }

    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    let net = free_network();
    let (api, api_2, http_1, http_2) = (free_port(), free_port(), free_port(), free_port());
    let env: Vec<(String, String)> = [
        ("PETSET_TAG", TAG.to_string()),
        ("PETSET_DATA", data.path().display().to_string()),
        ("PETSET_NET", net.clone()),
        ("PETSET_API_PORT", api.to_string()),
        ("PETSET_API_PORT_2", api_2.to_string()),
        ("PETSET_HTTP_PORT", http_1.to_string()),
        ("PETSET_HTTP_PORT_2", http_2.to_string()),
        ("PETSET_IDENTITY_PORT", free_port().to_string()),
        ("PETSET_STORAGE_PORT", free_port().to_string()),
        ("PETSET_NODE_LEASE_TTL", LEASE_TTL.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let project = Project {
        tool: compose_tool(),
        name: format!("petset-e2e-{}", std::process::id()),
        env,
        _data: data,
    };
    project.run(&["config", "-q"]);
    project.run(&["up", "-d"]);

    let mut petctl = Petctl {
        program: binary("petctl"),
        server: format!("127.0.0.1:{api}"),
    };
    wait_until("three Ready nodes", DEADLINE, || {
        let nodes = Command::new(&petctl.program)
            .args(["--server", &petctl.server, "get", "nodes"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&nodes.stdout).into_owned();
        (text.matches(" Ready ").count() == 3).then_some(())
    });

    // The seed's manifests, volumes moved under the stack's data folder.
    let mut manifests = String::new();
    for f in ["01-volumes.yaml", "02-service.yaml", "03-statefulset.yaml"] {
        let text = std::fs::read_to_string(repo_root().join("examples/kubia").join(f)).unwrap();
        manifests.push_str("---\n");
        manifests.push_str(&text.replace(
            "/var/lib/petset/volumes",
            &data_dir.join("volumes").display().to_string(),
        ));
    }
    // Storage out of the box: the stack has a default class.
    assert!(
        petctl.has_default_class("standard", "petset.io/shared"),
        "{}",
        petctl.run(&["get", "sc"])
    );
    let file = data_dir.join("kubia.yaml");
    std::fs::write(&file, manifests).unwrap();
    petctl.run(&["apply", "-f", file.to_str().unwrap()]);
    petctl.run(&["rollout", "status", "sts", "kubia", "--timeout", "120"]);
    let pods = petctl.wait_ready(&["kubia-0", "kubia-1"], DEADLINE);
    // Each pod has an address of its own on the Docker network, in its
    // node's pod subnet.
    for (name, _, ip, node, _) in &pods {
        let n = node.strip_prefix("node-").expect("a compose node");
        assert!(
            ip.starts_with(&format!("{net}.{n}.")),
            "{name} on {node} has address {ip}, not in {net}.{n}.0/24"
        );
    }

    // Through the API proxy: each pod answers with its own hostname; data
    // POSTed to kubia-0 is stored on its volume.
    let pod_url = |port: u16, pod: &str, path: &str| {
        format!("http://127.0.0.1:{port}/api/v1/namespaces/default/pods/{pod}/proxy/{path}")
    };
    let greeting = "Hey there! This greeting was submitted to kubia-0.";
    let (code, body) = http(&[
        "-X",
        "POST",
        "-d",
        greeting,
        &pod_url(http_1, "kubia-0", ""),
    ]);
    assert_eq!((code, body.as_str()), (200, "Data stored on pod kubia-0\n"));
    let (code, body) = http(&[&pod_url(http_1, "kubia-0", "")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("You've hit kubia-0\n"), "{body}");
    assert!(body.contains(greeting), "{body}");

    // Peers through the cluster DNS, from inside kubia-1: the SRV records of
    // the headless service, then each peer by its DNS name.
    let (code, body) = http(&[&pod_url(http_1, "kubia-1", "peers")]);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!(
            "- kubia-0.kubia.default.svc.cluster.local: {greeting}"
        )) && body.contains("- kubia-1.kubia.default.svc.cluster.local: No data posted yet"),
        "kubia-1 did not find both peers through DNS:\n{body}"
    );

    // Pod logs, from the node agent that runs kubia-0.
    let logs = petctl.run(&["logs", "kubia-0"]);
    assert!(
        logs.contains("Kubia server starting")
            && logs.contains("New data has been received and stored."),
        "{logs}"
    );

    // Exec probes run inside the container: readiness follows a file the
    // container has, and a failing liveness probe restarts it (a new
    // container, so the file is gone again).
    let agents: Vec<String> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| project.container(n))
        .collect();
    let probe_container = || {
        agents.iter().find_map(|agent| {
            containers(&[
                "petset.io/pod=default/probe-0".to_string(),
                format!("petset.io/sandbox={agent}"),
            ])
            .into_iter()
            .next()
        })
    };
    let probed = data_dir.join("probe.yaml");
    std::fs::write(&probed, PROBE_SET.replace("TAG", TAG)).unwrap();
    petctl.run(&["apply", "-f", probed.to_str().unwrap()]);
    let probe = |ready: bool, restarts: i64| {
        move |p: &petset_e2e::PodRow| {
            p.0 == "probe-0" && p.1 == ready && p.4 == restarts && !p.2.is_empty()
        }
    };
    wait_until("probe-0 running, not ready", DEADLINE, || {
        petctl.pods().iter().any(probe(false, 0)).then_some(())
    });
    let id = wait_until("probe-0's container", DEADLINE, probe_container);
    // petctl exec runs in the container through the engine (as `docker
    // exec`): its hostname, its input, its exit code.
    // (Once the agent has the container running: the pod has its address
    // before, and kubectl exec too answers "not found" until then.)
    let hostname = wait_until("probe-0 running, for exec", DEADLINE, || {
        let out = Command::new(&petctl.program)
            .args([
                "--server",
                &petctl.server,
                "exec",
                "probe-0",
                "--",
                "hostname",
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(hostname, "probe-0\n");
    let exec = |args: &[&str], input: &str| {
        use std::io::Write as _;
        let mut child = Command::new(&petctl.program)
            .args(["--server", &petctl.server, "exec"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("petctl runs");
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(input.as_bytes()).expect("input written");
        drop(stdin);
        let out = child.wait_with_output().expect("petctl ends");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(
        exec(
            &[
                "-i",
                "probe-0",
                "--",
                "/bin/sh",
                "-c",
                "read line; echo \"got $line\"; exit 7"
            ],
            "said in\n"
        ),
        (Some(7), "got said in\n".to_string())
    );
    petctl.run(&["exec", "probe-0", "--", "/bin/sh", "-c", ": > /tmp/ready"]);
    wait_until("probe-0 ready", DEADLINE, || {
        petctl.pods().iter().any(probe(true, 0)).then_some(())
    });
    petctl.run(&["exec", "probe-0", "--", "/bin/sh", "-c", ": > /tmp/die"]);
    wait_until("probe-0 restarted by its liveness probe", DEADLINE, || {
        petctl.pods().iter().any(probe(false, 1)).then_some(())
    });
    let restarted = wait_until("probe-0's new container", DEADLINE, || {
        probe_container().filter(|c| *c != id)
    });
    assert_ne!(restarted, id);
    petctl.run(&["delete", "sts", "probe"]);
    wait_until("probe-0 gone", DEADLINE, || {
        (!petctl.pods().iter().any(|p| p.0 == "probe-0") && probe_container().is_none())
            .then_some(())
    });

    petctl.run(&["scale", "sts", "kubia", "--replicas=3"]);
    petctl.wait_ready(&["kubia-0", "kubia-1", "kubia-2"], DEADLINE);

    // Node faults, TRIALS times each, each on the node that runs kubia-0:
    // - hung: the agent SIGSTOPped; its node's namespace fence (petset-shim
    //   --namespace) kills the node's pods at the lease deadline;
    // - paused: `docker pause` of the node container and its pods (the
    //   whole node frozen); on unpause the fence, overdue, kills them;
    // - cut: the node container disconnected from the network (its pods
    //   stay on it); the agent's renewals fail and the pods are killed.
    // kubia-0 must be Ready on another node while the witness, sampling
    // every kubia-pet process of the stack from the host, never sees two
    // live copies of a pod (a frozen process is not live). Then the node
    // is healed and Ready again.
    let network = project_network(&project.container("node-1"));
    for fault in [NodeFault::Hung, NodeFault::Paused, NodeFault::Cut] {
        for trial in 0..TRIALS {
            let pods = petctl.wait_ready(&["kubia-0", "kubia-1", "kubia-2"], DEADLINE);
            let node = pods[0].3.clone();
            let container = project.container(&node);
            let sampler = Sampler::watching(&net, "kubia-pet");
            let heal = fault.inject(&container, &network);
            let moved = wait_until("kubia-0 Ready on another node", DEADLINE, || {
                let pods = petctl.pods();
                let pod = pods.iter().find(|p| p.0 == "kubia-0")?.clone();
                (pod.1 && pod.3 != node && !pod.3.is_empty()).then_some(pod)
            });
            heal.heal();
            let seen = sampler.stop();
            assert!(
                seen.doubled().is_empty(),
                "{fault:?}, trial {trial}: two copies at once: {:?}",
                seen.doubles
            );
            assert_eq!(
                seen.most.get("kubia-0"),
                Some(&1),
                "{fault:?}, trial {trial}"
            );
            assert!(
                seen.samples > 100,
                "{fault:?}, trial {trial}: {} looks",
                seen.samples
            );
            eprintln!(
                "{fault:?}, trial {trial}: kubia-0 moved from {node} to {} with never two copies ({} looks)",
                moved.3, seen.samples
            );
            wait_until("three Ready nodes again", DEADLINE, || {
                (petctl.ready_nodes() == 3).then_some(())
            });
        }
    }

    // An etcd follower killed, TRIALS times: the other two serve on, and
    // over two node lease TTLs no pod is restarted or moved; the member then
    // starts again and rejoins. (The leader is not killed here: with this
    // stack's 4 s node lease, the election stalls renewals past the 2.7 s
    // fence, as RELIABILITY.md says of the local stack's etcd chaos.)
    for trial in 0..TRIALS {
        let members: Vec<(String, String)> = (0..3)
            .map(|n| {
                let id = project.container(&format!("etcd-{n}"));
                let ip = address_on(&id, &network);
                (id, ip)
            })
            .collect();
        let leader = wait_until("an etcd leader", DEADLINE, || {
            members
                .iter()
                .position(|(_, ip)| petset_e2e::etcd::leads(&format!("{ip}:2379")))
        });
        let victim = (leader + 1 + trial % 2) % 3;
        let member = format!("etcd-{victim}");
        let id = members[victim].0.clone();
        let before = petctl.wait_ready(&["kubia-0", "kubia-1", "kubia-2"], DEADLINE);
        run("docker", &["kill", "-s", "KILL", &id]);
        let killed = std::time::Instant::now();
        wait_until("two node TTLs with an etcd member down", DEADLINE, || {
            (killed.elapsed() >= Duration::from_secs(2 * LEASE_TTL) && petctl.ready_nodes() == 3)
                .then_some(())
        });
        let after = petctl.wait_ready(&["kubia-0", "kubia-1", "kubia-2"], DEADLINE);
        assert_eq!(
            after, before,
            "{member} killed, trial {trial}: a pod restarted or moved"
        );
        run("docker", &["start", &id]);
        wait_until(&format!("{member} healthy again"), DEADLINE, || {
            let health = run(
                "docker",
                &["inspect", "-f", "{{.State.Health.Status}}", &id],
            );
            (health.trim() == "healthy").then_some(())
        });
        eprintln!("{member} killed, trial {trial}: no pod restarted or moved");
    }

    // Stop the leading scheduler container: the other replica takes over
    // and its controller scales down.
    let replicas = [("scheduler-1", api), ("scheduler-2", api_2)];
    let first = wait_until("a scheduler leader", DEADLINE, || leader(&replicas));
    project.run(&["stop", &first]);
    let (other, other_port) = *replicas.iter().find(|(s, _)| *s != first).unwrap();
    petctl.server = format!("127.0.0.1:{other_port}");
    let second = wait_until("a new scheduler leader", DEADLINE, || leader(&replicas));
    assert_eq!(second, other);
    petctl.run(&["scale", "sts", "kubia", "--replicas=2"]);
    let pods = petctl.wait_ready(&["kubia-0", "kubia-1"], DEADLINE);

    // Kill the node container that runs kubia-0: its pod dies with it, and
    // once the node's lease has expired kubia-0 runs on another node, with
    // the data on its (shared) volume.
    let lost = pods[0].3.clone();
    let lost_container = project.container(&lost);
    run("docker", &["kill", "-s", "KILL", &lost_container]);
    wait_until(&format!("{lost}'s pod containers gone"), DEADLINE, || {
        containers(&[format!("petset.io/sandbox={lost_container}")])
            .is_empty()
            .then_some(())
    });
    let moved = wait_until("kubia-0 Ready on another node", DEADLINE, || {
        let pods = petctl.pods();
        let pod = pods.iter().find(|p| p.0 == "kubia-0")?.clone();
        (pod.1 && pod.3 != lost && !pod.3.is_empty()).then_some(pod)
    });
    let n = moved.3.strip_prefix("node-").unwrap();
    assert!(moved.2.starts_with(&format!("{net}.{n}.")), "{moved:?}");
    let other_http = if other == "scheduler-1" {
        http_1
    } else {
        http_2
    };
    let (code, body) = http(&[&pod_url(other_http, "kubia-0", "")]);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(greeting),
        "kubia-0 lost its data when it moved to {}: {body}",
        moved.3
    );

    // A real clustered application on the Docker runtime: examples/etcd,
    // its image mapped to petset/etcd (Debian's etcd). The members find
    // each other by their stable names through identity-svc's DNS; a key
    // written through etcd-0 is read through etcd-2.
    let etcd = std::fs::read_to_string(repo_root().join("examples/etcd/etcd.yaml"))
        .expect("examples/etcd");
    petctl.apply(&etcd);
    let members = petctl.wait_ready_prefixed("etcd-", 3, Duration::from_secs(180));
    let member = |name: &str| {
        members
            .iter()
            .find(|p| p.0 == name)
            .map(|p| p.2.clone())
            .expect("a member")
    };
    for m in ["etcd-0", "etcd-1", "etcd-2"] {
        let ip = member(m);
        wait_until(
            &format!("{m} healthy in a cluster of three"),
            DEADLINE,
            || (cluster_seen_from(&ip) == (3, true)).then_some(()),
        );
    }
    assert!(put(&member("etcd-0"), "petset", "on compose"));
    assert_eq!(
        get(&member("etcd-2"), "petset").as_deref(),
        Some("on compose")
    );

    // down: nothing of the project is left.
    project.run(&["down", "-v", "--remove-orphans", "-t", "20"]);
    let left = containers(&[format!("com.docker.compose.project={}", project.name)]);
    assert!(left.is_empty(), "compose containers left: {left:?}");
    for agent in &agents {
        let pods = containers(&[format!("petset.io/sandbox={agent}")]);
        assert!(
            pods.is_empty(),
            "pod containers of agent {agent} left: {pods:?}"
        );
    }
    let label = format!("label=com.docker.compose.project={}", project.name);
    for kind in ["network", "volume"] {
        let left = run("docker", &[kind, "ls", "-q", "--filter", &label]);
        assert!(left.trim().is_empty(), "{kind}s left: {left}");
    }
}
