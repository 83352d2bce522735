//! Faults injected into the README's local stack (process runtime), N
//! trials of each (`PETSET_CHAOS_TRIALS`, default 3), with an independent
//! witness: a sampler reads the process table every ~2 ms for the whole
//! run and counts the live copies of each pod, and every pod is sent a
//! write before each fault that must still be there after it.
//!
//! Faults: a node agent hung (SIGSTOP, resumed once its pods moved), a
//! node agent killed (SIGKILL, started again once its pods moved), and the
//! leading scheduler-svc replica killed (SIGKILL, started again). The
//! report (per fault: trials, moments with two live copies, time until the
//! moved pods were Ready elsewhere, acknowledged writes lost, pods
//! restarted by a scheduler kill) is printed, and written to
//! `PETSET_CHAOS_REPORT` when set. RELIABILITY.md holds a run with N = 50.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use petset_core::testing::Tied;
use petset_e2e::local::{LocalStack, Resume, Sampler, alive, process_of, processes};
use petset_e2e::{Petctl, PodRow, binary, curl, free_port, wait_until};

const DEADLINE: Duration = Duration::from_secs(120);
const LEASE_TTL: u64 = 3;
const PODS: [&str; 3] = ["kubia-0", "kubia-1", "kubia-2"];

#[derive(Debug, Default)]
struct Outcome {
    trials: u32,
    replaced: Vec<Duration>,
    writes: u32,
    lost: Vec<String>,
    restarted: Vec<String>,
}

struct Chaos {
    stack: LocalStack,
    petctl: Petctl,
    /// Programs this test started again (agents, scheduler replicas).
    restarted: Vec<Tied>,
}

impl Chaos {
    fn pods(&self) -> Vec<PodRow> {
        self.petctl.pods()
    }

    fn ready(&self) -> Vec<PodRow> {
        self.petctl.wait_ready(&PODS, DEADLINE)
    }

    /// Writes a fresh value to each pod; answers what was acknowledged.
    fn write_all(&self, tag: &str) -> BTreeMap<String, String> {
        let mut acked = BTreeMap::new();
        for pod in self.ready() {
            let value = format!("{tag}-{}", pod.0);
            let url = format!("http://{}:8080/", pod.2);
            if curl(&["-X", "POST", "-d", &value, &url])
                .is_some_and(|a| a.starts_with("Data stored on pod"))
            {
                acked.insert(pod.0.clone(), value);
            }
        }
        acked
    }

    /// The acknowledged writes no longer there.
    fn lost(&self, acked: &BTreeMap<String, String>) -> Vec<String> {
        let pods = self.ready();
        acked
            .iter()
            .filter(|(name, value)| {
                let pod = pods.iter().find(|p| &p.0 == *name).expect("every pod");
                let url = format!("http://{}:8080/", pod.2);
                !curl(&[&url])
                    .is_some_and(|a| a.contains(&format!("Data stored on this pod: {value}")))
            })
            .map(|(name, value)| format!("{name}: {value}"))
            .collect()
    }

    /// Waits until the pods that ran on `node` are Ready on other nodes.
    fn moved_off(&self, node: &str, pods: &[String]) {
        wait_until(&format!("{pods:?} Ready off {node}"), DEADLINE, || {
            let now = self.pods();
            pods.iter()
                .all(|name| now.iter().any(|p| &p.0 == name && p.1 && p.3 != node))
                .then_some(())
        });
    }

    /// Starts `cmdline` (a program killed earlier) again, for the rest of
    /// the test.
    fn start_again(&mut self, cmdline: &[String], log: &str) {
        self.restarted.push(Tied::spawn(
            std::path::Path::new(&cmdline[0]),
            &cmdline[1..],
            &self.stack.dir.path().join(log),
        ));
    }
}

impl Outcome {
    /// Counts one trial, and the writes acknowledged before it that are
    /// no longer there.
    fn trial(&mut self, chaos: &Chaos, acked: &BTreeMap<String, String>) {
        self.trials += 1;
        self.writes += acked.len() as u32;
        self.lost.extend(chaos.lost(acked));
    }
}

fn cmdline(pid: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The pods on the node that runs `pod`, and that node.
fn node_of(pods: &[PodRow], pod: &str) -> (String, Vec<String>) {
    let node = pods.iter().find(|p| p.0 == pod).unwrap().3.clone();
    let on = pods
        .iter()
        .filter(|p| p.3 == node)
        .map(|p| p.0.clone())
        .collect();
    (node, on)
}

#[test]
fn no_identity_runs_twice_and_no_acknowledged_write_is_lost_under_faults() {
    let trials: u32 = std::env::var("PETSET_CHAOS_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let stack = LocalStack::start("127.78", LEASE_TTL);
    let petctl = Petctl {
        program: binary("petctl"),
        server: stack.scheduler(0),
    };
    let mut chaos = Chaos {
        stack,
        petctl,
        restarted: Vec::new(),
    };
    chaos.petctl.run(&["scale", "sts", "kubia", "--replicas=3"]);
    chaos.ready();
    let nodes = chaos.petctl.ready_nodes();
    assert_eq!(nodes, 3);
    let sampler = Sampler::start();
    let mut outcomes: BTreeMap<&str, Outcome> = BTreeMap::new();

    for trial in 0..trials {
        // A hung agent: its shims kill its pods at the lease deadline.
        let (node, on) = node_of(&chaos.ready(), PODS[trial as usize % 3]);
        let acked = chaos.write_all(&format!("{trial}-hung"));
        let resume = Resume(agent_pid(&node));
        run_kill("-STOP", &resume.0);
        let start = Instant::now();
        chaos.moved_off(&node, &on);
        let took = start.elapsed();
        drop(resume);
        wait_until("the resumed node Ready", DEADLINE, || {
            (chaos.petctl.ready_nodes() == nodes).then_some(())
        });
        let o = outcomes.entry("agent hung (SIGSTOP)").or_default();
        o.trial(&chaos, &acked);
        o.replaced.push(took);

        // A killed agent: its shims see the pipe close and kill at once.
        let (node, on) = node_of(&chaos.ready(), PODS[(trial as usize + 1) % 3]);
        let acked = chaos.write_all(&format!("{trial}-killed"));
        let pid = agent_pid(&node);
        let args = cmdline(&pid);
        run_kill("-KILL", &pid);
        let start = Instant::now();
        chaos.moved_off(&node, &on);
        let took = start.elapsed();
        chaos.start_again(&args, &format!("{node}-again-{trial}.log"));
        wait_until("the restarted node Ready", DEADLINE, || {
            (chaos.petctl.ready_nodes() == nodes).then_some(())
        });
        let o = outcomes.entry("agent killed (SIGKILL)").or_default();
        o.trial(&chaos, &acked);
        o.replaced.push(took);

        // The leading scheduler replica killed: no pod restarts.
        let acked = chaos.write_all(&format!("{trial}-leader"));
        let leader = wait_until("one scheduler replica to lead", DEADLINE, || {
            chaos.stack.leader()
        });
        let other = 1 - leader;
        let before: Vec<(String, Option<String>)> = chaos
            .ready()
            .iter()
            .map(|p| (p.0.clone(), process_of(&p.0, &p.2)))
            .collect();
        let pid = processes(&[
            "scheduler-svc",
            &format!("--grpc-addr {}", chaos.stack.scheduler(leader)),
        ]);
        assert_eq!(pid.len(), 1, "{pid:?}");
        let args = cmdline(&pid[0]);
        run_kill("-KILL", &pid[0]);
        let killed = Instant::now();
        chaos.petctl.server = chaos.stack.scheduler(other);
        wait_until(
            "the other replica to lead, three node TTLs on",
            DEADLINE,
            || {
                (killed.elapsed() >= Duration::from_secs(3 * LEASE_TTL)
                    && chaos.stack.leader() == Some(other)
                    && chaos.petctl.ready_nodes() == nodes)
                    .then_some(())
            },
        );
        let after: Vec<(String, Option<String>)> = chaos
            .ready()
            .iter()
            .map(|p| (p.0.clone(), process_of(&p.0, &p.2)))
            .collect();
        let o = outcomes
            .entry("leading scheduler killed (SIGKILL)")
            .or_default();
        o.trial(&chaos, &acked);
        for (b, a) in before.iter().zip(&after) {
            if b != a || !b.1.as_deref().is_some_and(alive) {
                o.restarted.push(format!("{} ({:?} → {:?})", b.0, b.1, a.1));
            }
        }
        // Started again, on a port scripts/up reserved for it.
        let mut args = args;
        if let Some(i) = args.iter().position(|a| a == "--http-addr") {
            args[i + 1] = format!("127.0.0.1:{}", free_port());
        }
        chaos.start_again(&args, &format!("scheduler-{leader}-again-{trial}.log"));
        let back = chaos.stack.scheduler(leader);
        wait_until("the restarted replica to answer", DEADLINE, || {
            Command::new(binary("petctl"))
                .args(["--server", &back, "get", "nodes"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        });
    }
    let seen = sampler.stop();

    let mut report = format!(
        "chaos: {trials} trials of each fault, node lease TTL {LEASE_TTL} s, process table sampled {} times\n\
         | fault | trials | two live copies of one pod (whole run) | moved pods Ready elsewhere: p50 | max | acknowledged writes lost | pods restarted |\n\
         |---|---|---|---|---|---|---|\n",
        seen.samples
    );
    let doubled = seen.doubled().len();
    for (fault, o) in &outcomes {
        let mut t = o.replaced.clone();
        t.sort();
        let (p50, max) = match (t.get(t.len() / 2), t.last()) {
            (Some(p), Some(m)) => (
                format!("{:.2} s", p.as_secs_f64()),
                format!("{:.2} s", m.as_secs_f64()),
            ),
            _ => ("n/a".into(), "n/a".into()),
        };
        let _ = writeln!(
            report,
            "| {fault} | {} | {doubled} | {p50} | {max} | {}/{} | {} |",
            o.trials,
            o.lost.len(),
            o.writes,
            o.restarted.len()
        );
    }
    eprintln!("{report}");
    if let Some(path) = std::env::var_os("PETSET_CHAOS_REPORT") {
        std::fs::write(path, &report).unwrap();
    }
    assert!(
        seen.samples > 1000,
        "the sampler looked {} times",
        seen.samples
    );
    assert!(
        seen.doubled().is_empty(),
        "two live copies of one identity: {seen:?}"
    );
    assert_eq!(seen.most.len(), 3, "every pod was seen: {seen:?}");
    for (fault, o) in &outcomes {
        assert_eq!(o.trials, trials, "{fault}");
        assert!(o.lost.is_empty(), "{fault}: writes lost: {:?}", o.lost);
        assert!(
            o.restarted.is_empty(),
            "{fault}: pods restarted: {:?}",
            o.restarted
        );
        assert!(o.writes > 0, "{fault}: no write was acknowledged");
    }
}

/// The pid of `node`'s agent (scripts/up's, or one this test started).
fn agent_pid(node: &str) -> String {
    let pids = processes(&["node-agent", &format!("--name {node} ")]);
    assert_eq!(pids.len(), 1, "{node}: {pids:?}");
    pids[0].clone()
}

fn run_kill(signal: &str, pid: &str) {
    let status = Command::new("kill").args([signal, pid]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}
