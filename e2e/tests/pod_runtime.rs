//! Pods as Kubernetes runs them, on the README's local stack (process
//! runtime): a container's environment and command line (`valueFrom`
//! `fieldRef` and `resourceFieldRef`, `$(VAR)` in values, `command` and
//! `args`, `$$` escaping; the agent's own environment kept out), an exec
//! readiness probe that runs inside the pod (it checks a file at the
//! volume's mount path, which exists only in the pod's mount namespace),
//! `petctl exec` (in the pod, with its environment, standard input, the
//! command's exit code; the probe follows `exec rm/touch` of its file), and
//! what petset cannot answer (ConfigMaps, Secrets, unknown fields) refused
//! at apply with the field named; each pod's own network (a namespace on
//! its node's bridge: bound to 0.0.0.0, reached from another node) and
//! process ids.

use std::time::Duration;

use petset_e2e::local::LocalStack;
use petset_e2e::node_fault::{cgroup_entries, cgroup_mount};
use petset_e2e::{Petctl, binary, wait_until};

const SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: envtest
spec:
  serviceName: kubia
  replicas: 1
  selector:
    matchLabels: {app: envtest}
  template:
    metadata:
      labels: {app: envtest, tier: backend}
      annotations: {example.com/team: blue}
    spec:
      containers:
      - name: main
        image: busybox
        command: ["/bin/sh", "-c"]
        args:
        - >-
          echo "name=$(MY_NAME) ns=$(MY_NS) ip=$(MY_IP) node=$(MY_NODE)
          tier=$(TIER) team=$(TEAM) mem=$(MEM_MI) url=$(URL)
          agent=${PETSET_STACK_DIR:-none} shellip=$MY_IP"
          'literal=$$(MY_NAME) unknown=$(NOT_DEFINED)';
          touch /var/data/ready;
          while :; do
          if [ -f /var/data/say ]; then cat /var/data/say; rm -f /var/data/say; fi;
          sleep 0.2; done
        readinessProbe:
          exec:
            command: [test, -f, /var/data/ready]
          periodSeconds: 1
        volumeMounts:
        - {name: data, mountPath: /var/data}
        env:
        - name: MY_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: MY_NS
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: MY_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        - name: MY_NODE
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        - name: TIER
          valueFrom: {fieldRef: {fieldPath: "metadata.labels['tier']"}}
        - name: TEAM
          valueFrom: {fieldRef: {fieldPath: "metadata.annotations['example.com/team']"}}
        - name: MEM_MI
          valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}
        - name: URL
          value: "http://$(MY_NAME).kubia.$(MY_NS):8080"
        resources:
          limits: {memory: 64Mi}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Mi}}
"#;

/// Runs as uid 1000 in group 3000 with no capabilities, its volume given
/// to fsGroup 2000, its root read-only.
const SECURE: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: secure
spec:
  serviceName: kubia
  replicas: 1
  selector:
    matchLabels: {app: secure}
  template:
    metadata:
      labels: {app: secure}
    spec:
      securityContext:
        runAsUser: 1000
        runAsGroup: 3000
        fsGroup: 2000
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: main
        image: busybox
        command:
        - /bin/sh
        - -c
        - >-
          echo "ids `id -u` `id -g` `id -G`";
          grep CapEff /proc/self/status;
          echo by-1000 > /var/data/file && echo "volume writable";
          exec sleep 3600
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: data, mountPath: /var/data}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Mi}}
"#;

/// `petctl --server SERVER exec ARGS`, with `input` on its standard input:
/// its exit code, standard output and standard error.
fn exec(server: &str, args: &[&str], input: Option<&str>) -> (Option<i32>, String, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(binary("petctl"))
        .args(["--server", server, "exec"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("petctl starts");
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).expect("petctl reads");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("petctl runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lines of a pod's log once it has `lines` of them.
fn log_lines(petctl: &Petctl, pod: &str, lines: usize) -> Vec<String> {
    wait_until(
        &format!("{pod}'s first {lines} lines"),
        Duration::from_secs(120),
        || {
            let logs = std::process::Command::new(binary("petctl"))
                .args(["--server", &petctl.server, "logs", pod])
                .output()
                .ok()?;
            let logs: Vec<String> = String::from_utf8_lossy(&logs.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            (logs.len() >= lines).then_some(logs)
        },
    )
}

/// The CFS quota and period (microseconds) of the cpu cgroup named in
/// `cgroups` (a process's `/proc/<pid>/cgroup`), read on this host: v1's
/// cpu hierarchy, else v2's `cpu.max`.
fn cpu_quota(cgroups: &str) -> Option<(u64, u64)> {
    for (controllers, path) in cgroup_entries(cgroups) {
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "cpu") {
            let dir = cgroup_mount(Some("cpu"))?.join(path);
            let read = |f: &str| -> Option<u64> {
                std::fs::read_to_string(dir.join(f))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            };
            return Some((read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?));
        }
        if controllers.is_empty() {
            let max = std::fs::read_to_string(cgroup_mount(None)?.join(path).join("cpu.max"));
            if let Some((quota, period)) =
                max.ok().as_deref().and_then(|m| m.trim().split_once(' '))
            {
                return Some((quota.parse().ok()?, period.parse().ok()?));
            }
        }
    }
    None
}

#[test]
fn env_value_from_and_var_expansion_follow_kubernetes() {
    let stack = LocalStack::start("10.84", 10);
    let petctl = Petctl {
        program: binary("petctl"),
        server: stack.scheduler(0),
    };
    petctl.apply(SET);
    let line = wait_until("envtest-0's first line", Duration::from_secs(120), || {
        let logs = std::process::Command::new(binary("petctl"))
            .args(["--server", &petctl.server, "logs", "envtest-0"])
            .output()
            .ok()?;
        let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
        logs.lines()
            .find(|l| l.starts_with("name="))
            .map(str::to_string)
    });
    let pod = petctl
        .pods()
        .into_iter()
        .find(|p| p.0 == "envtest-0")
        .expect("envtest-0 listed");
    let (ip, node) = (pod.2, pod.3);
    let want = format!(
        "name=envtest-0 ns=default ip={ip} node={node} tier=backend team=blue mem=64 \
         url=http://envtest-0.kubia.default:8080 agent=none shellip={ip} \
         literal=$(MY_NAME) unknown=$(NOT_DEFINED)"
    );
    assert_eq!(line, want);

    // The exec probe runs in the pod: /var/data/ready is on the pod's
    // volume, at its mount path, which the host does not have.
    assert!(!std::path::Path::new("/var/data/ready").exists());
    let ready = |want: bool| {
        wait_until(
            &format!("envtest-0 Ready {want}"),
            Duration::from_secs(60),
            || {
                petctl
                    .pods()
                    .iter()
                    .any(|p| p.0 == "envtest-0" && p.1 == want)
                    .then_some(())
            },
        )
    };
    ready(true);
    // The file is on the volume's folder on the node.
    let volumes = petctl.json(&["get", "pv"]);
    let folder = volumes["items"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|v| v["spec"]["claimRef"]["name"] == "data-envtest-0")
        .and_then(|v| {
            let spec = &v["spec"];
            spec["hostPath"]["path"]
                .as_str()
                .or(spec["local"]["path"].as_str())
        })
        .expect("the claim's volume has a folder")
        .to_string();
    let marker = std::path::Path::new(&folder).join("ready");
    assert!(marker.exists(), "{marker:?}");

    // petctl exec runs in the pod, with its environment, and ends with the
    // command's code; the probe follows what it does to the volume.
    let exec = |args: &[&str], input: Option<&str>| exec(&petctl.server, args, input);
    for pod in ["envtest-0", "kubia-0"] {
        assert_eq!(
            exec(&[pod, "--", "hostname"], None),
            (Some(0), format!("{pod}\n"), String::new())
        );
    }
    assert_eq!(
        exec(
            &["envtest-0", "--", "sh", "-c", "echo $MY_NAME $TIER"],
            None
        )
        .1,
        "envtest-0 backend\n"
    );
    let (code, _, err) = exec(
        &["envtest-0", "--", "sh", "-c", "echo oops >&2; exit 3"],
        None,
    );
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(err, "oops\ncommand terminated with exit code 3\n");
    assert_eq!(
        exec(
            &["-i", "envtest-0", "--", "cat"],
            Some("line one\nline two\n")
        )
        .1,
        "line one\nline two\n"
    );
    // -t: the command on a terminal of its own (its output, with the
    // terminal's line ends), -i -t: keys in, the end of input as Ctrl-D.
    let (code, out, err) = exec(&["-t", "envtest-0", "--", "tty"], None);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("/dev/pts/") && out.ends_with("\r\n"),
        "{out:?}"
    );
    let (code, out, _) = exec(
        &[
            "-i",
            "-t",
            "envtest-0",
            "--",
            "sh",
            "-c",
            "read line; echo got:$line; exit 4",
        ],
        Some("hello\n"),
    );
    assert_eq!(code, Some(4));
    assert!(out.contains("got:hello\r\n"), "{out:?}");
    let (code, _, err) = exec(&["-c", "nope", "envtest-0", "--", "true"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("no running container nope"), "{err}");
    assert_eq!(
        exec(&["envtest-0", "--", "rm", "/var/data/ready"], None).0,
        Some(0)
    );
    assert!(!marker.exists());
    ready(false);
    assert_eq!(
        exec(&["envtest-0", "--", "touch", "/var/data/ready"], None).0,
        Some(0)
    );
    ready(true);

    // A root container holds the default capabilities (containerd's and
    // Docker's set), not all of root's.
    assert_eq!(
        exec(
            &["envtest-0", "--", "grep", "CapBnd", "/proc/self/status"],
            None
        )
        .1,
        "CapBnd:\t00000000a80425fb\n"
    );

    // securityContext: the user, group and groups asked, no capabilities,
    // the volume writable through fsGroup, the root read-only; exec runs
    // as the container does.
    petctl.apply(SECURE);
    let lines = log_lines(&petctl, "secure-0", 3);
    assert_eq!(
        lines[..3],
        [
            "ids 1000 3000 3000 2000",
            "CapEff:\t0000000000000000",
            "volume writable"
        ]
    );
    assert_eq!(
        exec(&["secure-0", "--", "id", "-u"], None),
        (Some(0), "1000\n".to_string(), String::new())
    );
    let (code, _, err) = exec(
        &["secure-0", "--", "touch", "/var/tmp/petset-ro-probe"],
        None,
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!std::path::Path::new("/var/tmp/petset-ro-probe").exists());
    assert_eq!(
        exec(
            &["secure-0", "--", "grep", "NoNewPrivs", "/proc/self/status"],
            None
        )
        .1,
        "NoNewPrivs:\t1\n"
    );
    // runAsNonRoot without a user: refused at start, said in the status.
    let root = SECURE
        .replace("name: secure", "name: nonroot")
        .replace("app: secure", "app: nonroot")
        .replace("runAsUser: 1000", "runAsNonRoot: true");
    petctl.apply(&root);
    let reason = wait_until(
        "nonroot-0's waiting reason",
        Duration::from_secs(60),
        || {
            let out = std::process::Command::new(binary("petctl"))
                .args([
                    "--server",
                    &petctl.server,
                    "get",
                    "pod",
                    "nonroot-0",
                    "-o",
                    "json",
                ])
                .output()
                .ok()?;
            let pod: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let status = &pod["status"];
            status["reason"]
                .as_str()
                .filter(|r| !r.is_empty())
                .map(|r| format!("{r}: {}", status["message"].as_str().unwrap_or_default()))
        },
    );
    assert!(
        reason.starts_with("CreateContainerConfigError") && reason.contains("runAsNonRoot"),
        "{reason}"
    );

    // Names inside a pod: its own in /etc/hosts, its peers' through the
    // cluster DNS (the node relays port 53 to identity-svc), with
    // Kubernetes' search path.
    let hosts = exec(&["envtest-0", "--", "cat", "/etc/hosts"], None).1;
    assert!(
        hosts.contains(&format!(
            "{ip}\tenvtest-0.kubia.default.svc.cluster.local\tenvtest-0"
        )),
        "{hosts}"
    );
    let kubia_1 = petctl
        .pods()
        .into_iter()
        .find(|p| p.0 == "kubia-1")
        .expect("kubia-1");
    let found = wait_until(
        "kubia-1.kubia from inside a pod",
        Duration::from_secs(60),
        || {
            let (code, out, _) = exec(
                &["envtest-0", "--", "getent", "hosts", "kubia-1.kubia"],
                None,
            );
            (code == Some(0)).then_some(out)
        },
    );
    assert!(found.starts_with(&format!("{} ", kubia_1.2)), "{found}");
    let peers =
        petset_e2e::curl(&[&format!("http://{}:8080/peers", kubia_1.2)]).expect("an answer");
    assert!(peers.contains("kubia-0"), "kubia finds its peers: {peers}");

    // Each pod has a network of its own (the stack's bridge network): one
    // that binds 0.0.0.0:8080 is reached at its address from a pod on
    // another node, and at 127.0.0.1 from inside itself only.
    let elsewhere = if node == "node-1" { "node-2" } else { "node-1" };
    let open = format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: open
spec:
  serviceName: kubia
  replicas: 1
  selector:
    matchLabels: {{app: open}}
  template:
    metadata:
      labels: {{app: open}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {elsewhere}}}
      containers:
      - name: main
        image: luksa/kubia-pet
        env:
        - {{name: LISTEN, value: "0.0.0.0:8080"}}
        - {{name: DATA_FILE, value: /tmp/open-data}}
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
        resources:
          limits: {{cpu: 250m}}
"#
    );
    petctl.apply(&open);
    let open_0 = wait_until("open-0 Ready", Duration::from_secs(60), || {
        petctl.pods().into_iter().find(|p| p.0 == "open-0" && p.1)
    });
    assert_eq!(open_0.3, elsewhere);
    let reached = exec(
        &[
            "envtest-0",
            "--",
            "curl",
            "-s",
            "-m",
            "10",
            &format!("http://{}:8080/", open_0.2),
        ],
        None,
    );
    assert_eq!(reached.0, Some(0), "{reached:?}");
    assert!(reached.1.starts_with("You've hit open-0"), "{reached:?}");
    let own_loopback = |pod: &str| {
        exec(
            &[
                pod,
                "--",
                "curl",
                "-s",
                "-m",
                "10",
                "http://127.0.0.1:8080/",
            ],
            None,
        )
    };
    let inside = own_loopback("open-0");
    assert!(inside.1.starts_with("You've hit open-0"), "{inside:?}");
    let (code, _, _) = own_loopback("envtest-0");
    assert_ne!(code, Some(0), "envtest-0's loopback is its own");
    // Its own process ids: the container's program is pid 1.
    let (_, pid_1, _) = exec(&["open-0", "--", "cat", "/proc/1/cmdline"], None);
    assert!(pid_1.contains("kubia-pet"), "{pid_1:?}");
    // limits.cpu 250m: a CFS quota of 25 ms per 100 ms period on the
    // container's cgroup, as the kubelet sets it.
    let (_, cgroups, _) = exec(&["open-0", "--", "cat", "/proc/1/cgroup"], None);
    assert_eq!(
        cpu_quota(&cgroups),
        Some((25_000, 100_000)),
        "open-0's cgroups: {cgroups}"
    );
    petctl.run(&["delete", "sts", "open"]);

    // port-forward: a local port relayed to kubia-0's 8080 through
    // scheduler-svc and its node agent, both ways, one connection after
    // another.
    let local = petset_e2e::free_port();
    let mut forward = std::process::Command::new(binary("petctl"))
        .args(["--server", &petctl.server, "port-forward", "kubia-0"])
        .arg(format!("{local}:8080"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("petctl starts");
    let url = format!("http://127.0.0.1:{local}/");
    let hit = wait_until(
        "kubia-0 through port-forward",
        Duration::from_secs(60),
        || petset_e2e::curl(&[&url]),
    );
    assert!(hit.starts_with("You've hit kubia-0"), "{hit}");
    let stored =
        petset_e2e::curl(&["-X", "POST", "-d", "through the tunnel", &url]).expect("an answer");
    assert!(stored.contains("Data stored on pod kubia-0"), "{stored}");
    let read = petset_e2e::curl(&[&url]).expect("an answer");
    assert!(
        read.contains("Data stored on this pod: through the tunnel"),
        "{read}"
    );
    let _ = forward.kill();
    let _ = forward.wait();

    // logs -f: what the container writes as it writes it, until it ends.
    let mut follower = std::process::Command::new(binary("petctl"))
        .args(["--server", &petctl.server, "logs", "-f", "envtest-0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("petctl starts");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().expect("piped");
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let next_line = || {
        lines_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a line")
    };
    assert!(next_line().starts_with("name=envtest-0 "));
    assert_eq!(
        exec(
            &[
                "envtest-0",
                "--",
                "sh",
                "-c",
                "echo said-later > /var/data/say"
            ],
            None
        )
        .0,
        Some(0)
    );
    assert_eq!(next_line(), "said-later");
    petctl.run(&["delete", "pod", "envtest-0"]);
    let ended = wait_until(
        "logs -f to end with its container",
        Duration::from_secs(60),
        || follower.try_wait().expect("petctl runs"),
    );
    assert!(ended.success(), "{ended}");

    // Over its memory limit: the kernel kills it, and its status says
    // OOMKilled, as Kubernetes says it.
    let hungry = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: hungry
spec:
  serviceName: kubia
  replicas: 1
  selector:
    matchLabels: {app: hungry}
  template:
    metadata:
      labels: {app: hungry}
    spec:
      containers:
      - name: main
        image: busybox
        # tail keeps the current line, and /dev/zero has no line ends.
        command: [sh, -c, "exec tail /dev/zero"]
        resources:
          limits: {memory: 32Mi}
"#;
    petctl.apply(hungry);
    let status = wait_until("hungry-0 OOMKilled", Duration::from_secs(60), || {
        let out = std::process::Command::new(binary("petctl"))
            .args([
                "--server",
                &petctl.server,
                "get",
                "pod",
                "hungry-0",
                "-o",
                "json",
            ])
            .output()
            .ok()?;
        let pod: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let container = pod["status"]["containerStatuses"][0].clone();
        (container["lastState"]["terminated"]["reason"] == "OOMKilled").then_some(container)
    });
    assert!(
        status["restartCount"].as_i64().unwrap_or(0) >= 1,
        "{status}"
    );

    // Refused at apply, naming the field and what to do instead.
    let config = SET.replace(
        "valueFrom: {fieldRef: {fieldPath: metadata.name}}",
        "valueFrom: {configMapKeyRef: {name: settings, key: name}}",
    );
    let refused = |manifest: &str, says: &[&str]| {
        let err = petctl.try_apply(manifest).unwrap_err();
        assert!(says.iter().all(|s| err.contains(s)), "{err}");
    };
    refused(
        &config,
        &[
            "containers[0].env[0].value_from.config_map_key_ref",
            "ConfigMaps and Secrets do not exist in petset",
        ],
    );
    refused(
        &SET.replace("metadata.namespace", "spec.serviceAccountName"),
        &[
            "containers[0].env[1].value_from.field_ref.field_path",
            "spec.serviceAccountName",
        ],
    );
    refused(
        &SET.replace("fieldPath: spec.nodeName", "fieldPth: spec.nodeName"),
        &["fieldPth"],
    );
}
