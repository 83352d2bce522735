//! The harness of the fault-injection tests (`tests/chaos.rs`,
//! `tests/etcd_chaos.rs`): the local stack with kubia at three replicas,
//! writes acknowledged by each pod before a fault and read back after it,
//! faults by signal, and the report table RELIABILITY.md quotes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use petset_core::testing::Tied;

use crate::local::{Double, LocalStack, Samples};
use crate::node_fault::NodeCgroups;
use crate::{Petctl, PodRow, curl, wait_until};

/// How long any step of a fault may take.
pub const DEADLINE: Duration = Duration::from_secs(120);
/// kubia's replicas during the faults.
pub const PODS: [&str; 3] = ["kubia-0", "kubia-1", "kubia-2"];

/// What the trials of one fault saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Trials run.
    pub trials: u32,
    /// How long until the pods the fault took down were Ready elsewhere,
    /// by how many pods the faulted node ran (kubia is OrderedReady: a
    /// second pod is started once the first is Ready).
    pub replaced: Vec<(usize, Duration)>,
    /// Writes acknowledged before the faults.
    pub writes: u32,
    /// Acknowledged writes no longer there after.
    pub lost: Vec<String>,
    /// Pods whose process changed across a fault that should stop none.
    pub restarted: Vec<String>,
    /// A frozen node's thaw: the instant just before it, and the pids of
    /// the stale copies it resumed (their overlap with the replacements,
    /// until their shims kill them, is what no lease can fence; it is
    /// reported apart, not counted as two copies).
    pub resumed: Vec<(Instant, Vec<String>)>,
    /// How long the stale copies of a frozen node lived after the thaw.
    pub stale_lived: Vec<Duration>,
    /// Writes sent to the stale copies while they were frozen (queued on
    /// their sockets): sent, acknowledged after the thaw, found on the
    /// volume afterwards, and damaging: the pod held neither that write nor
    /// the one acknowledged before the fault (a write the stale copy began
    /// and did not finish before its shim killed it).
    pub stale_writes: [u32; 4],
}

impl Outcome {
    fn excuses(&self, double: &Double) -> bool {
        self.resumed
            .iter()
            .any(|(at, stale)| double.first >= *at && double.pids.iter().any(|p| stale.contains(p)))
    }
}

/// The local stack under faults.
#[derive(Debug)]
pub struct Chaos {
    /// The stack.
    pub stack: LocalStack,
    /// petctl, pointed at a scheduler replica that runs.
    pub petctl: Petctl,
    /// Programs the test started again (agents, scheduler replicas, etcd
    /// members).
    pub restarted: Vec<Tied>,
    /// Each node's cgroup (removed last, once everything in it stopped).
    pub cgroups: NodeCgroups,
}

impl Chaos {
    /// The local stack (pods on `pod_net`, node leases of `lease_ttl`
    /// seconds, `env` for scripts/up), kubia scaled to three replicas, all
    /// Ready on three Ready nodes.
    pub fn start(pod_net: &str, lease_ttl: u64, env: &[(&str, &str)]) -> Chaos {
        let cgroups = NodeCgroups::create();
        let dir = cgroups.dir().display().to_string();
        let mut env = env.to_vec();
        env.push(("PETSET_NODE_CGROUPS", &dir));
        let stack = LocalStack::start_with(pod_net, lease_ttl, &env);
        let petctl = Petctl {
            program: crate::binary("petctl"),
            server: stack.scheduler(0),
        };
        let chaos = Chaos {
            stack,
            petctl,
            restarted: Vec::new(),
            cgroups,
        };
        chaos.petctl.run(&["scale", "sts", "kubia", "--replicas=3"]);
        chaos.ready();
        assert_eq!(chaos.petctl.ready_nodes(), 3);
        chaos
    }

    /// The pods now.
    pub fn pods(&self) -> Vec<PodRow> {
        self.petctl.pods()
    }

    /// The pods once all three are Ready.
    pub fn ready(&self) -> Vec<PodRow> {
        self.petctl.wait_ready(&PODS, DEADLINE)
    }

    /// Writes a fresh value to each pod; answers what was acknowledged.
    pub fn write_all(&self, tag: &str) -> BTreeMap<String, String> {
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

    /// The acknowledged writes no longer there: a pod holds neither its
    /// acknowledged value nor a write sent to it after that one (`later`).
    pub fn lost(
        &self,
        acked: &BTreeMap<String, String>,
        later: &BTreeMap<String, String>,
    ) -> Vec<String> {
        acked
            .iter()
            .filter(|(name, value)| {
                let now = self.value(name);
                now.as_ref() != Some(value) && now.as_ref() != later.get(*name)
            })
            .map(|(name, value)| format!("{name}: {value}"))
            .collect()
    }

    /// The value pod `name` holds, once every pod is Ready.
    pub fn value(&self, name: &str) -> Option<String> {
        let pods = self.ready();
        let pod = pods.iter().find(|p| p.0 == name).expect("every pod");
        let answer = curl(&[&format!("http://{}:8080/", pod.2)])?;
        let at = answer.find("Data stored on this pod: ")?;
        let rest = &answer[at + "Data stored on this pod: ".len()..];
        Some(rest.lines().next().unwrap_or_default().trim().to_string())
    }

    /// Waits until the pods that ran on `node` are Ready on other nodes.
    pub fn moved_off(&self, node: &str, pods: &[String]) {
        wait_until(&format!("{pods:?} Ready off {node}"), DEADLINE, || {
            let now = self.pods();
            pods.iter()
                .all(|name| now.iter().any(|p| &p.0 == name && p.1 && p.3 != node))
                .then_some(())
        });
    }

    /// Each pod, once all are Ready, with its process.
    pub fn pod_processes(&self) -> PodProcesses {
        self.ready()
            .iter()
            .map(|p| (p.0.clone(), crate::local::process_of(&p.0, &p.2)))
            .collect()
    }

    /// Starts `cmdline` (a program killed earlier) again, for the rest of
    /// the test.
    pub fn start_again(&mut self, cmdline: &[String], log: &str) {
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
    pub fn trial(&mut self, chaos: &Chaos, acked: &BTreeMap<String, String>) {
        self.trials += 1;
        self.writes += acked.len() as u32;
        self.lost.extend(chaos.lost(acked, &BTreeMap::new()));
    }

    /// [`Outcome::trial`] for a frozen node, whose stale copies were sent
    /// a write each (`later`, by pod): such a pod may hold either write; one
    /// that holds neither was damaged by its stale copy after the thaw,
    /// which no lease can fence: counted as such, not as a lost write.
    pub fn trial_stale(
        &mut self,
        chaos: &Chaos,
        acked: &BTreeMap<String, String>,
        later: &BTreeMap<String, String>,
    ) {
        self.trials += 1;
        self.writes += acked.len() as u32;
        for lost in chaos.lost(acked, later) {
            let pod = lost.split(':').next().unwrap_or_default();
            if later.contains_key(pod) {
                self.stale_writes[3] += 1;
            } else {
                self.lost.push(lost);
            }
        }
    }
}

/// Trials of each fault: `PETSET_CHAOS_TRIALS`, else 3.
pub fn trials() -> u32 {
    std::env::var("PETSET_CHAOS_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// Each Ready pod and the pid of its process.
pub type PodProcesses = Vec<(String, Option<String>)>;

/// The pods whose process is not the same, still alive one in `after` as
/// in `before`.
pub fn restarted(before: &PodProcesses, after: &PodProcesses) -> Vec<String> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b != a || !b.1.as_deref().is_some_and(crate::local::alive))
        .map(|(b, a)| format!("{} ({:?} → {:?})", b.0, b.1, a.1))
        .collect()
}

/// A process's command line.
pub fn cmdline(pid: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The pods on the node that runs `pod`, and that node.
pub fn node_of(pods: &[PodRow], pod: &str) -> (String, Vec<String>) {
    let node = pods.iter().find(|p| p.0 == pod).unwrap().3.clone();
    let on = pods
        .iter()
        .filter(|p| p.3 == node)
        .map(|p| p.0.clone())
        .collect();
    (node, on)
}

/// Prints the report of a run (and writes it to `PETSET_CHAOS_REPORT` when
/// set), then checks it: the sampler looked often and never saw two live
/// copies of a pod (but for a frozen node's stale copies after its thaw,
/// reported apart), every fault ran `trials` times, lost no acknowledged
/// write and restarted no pod it should not have.
pub fn report(title: &str, trials: u32, outcomes: &BTreeMap<&str, Outcome>, seen: &Samples) {
    let doubles: Vec<&Double> = seen
        .doubles
        .iter()
        .filter(|d| !outcomes.values().any(|o| o.excuses(d)))
        .collect();
    let mut report = format!(
        "{title}, process table sampled {} times\n\
         | fault | trials | two live copies of one pod (whole run) | one pod moved: Ready elsewhere p50 | max | two pods moved: p50 | max | acknowledged writes lost | pods restarted |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        seen.samples
    );
    let mut stale = String::new();
    for (fault, o) in outcomes {
        let moved = |n: usize| -> Vec<Duration> {
            let t = o.replaced.iter().filter(|(k, _)| *k == n);
            t.map(|(_, d)| *d).collect()
        };
        let (p50, max) = spread(&moved(1), seconds);
        let (p50_2, max_2) = spread(&moved(2), seconds);
        let _ = writeln!(
            report,
            "| {fault} | {} | {} | {p50} | {max} | {p50_2} | {max_2} | {}/{} | {} |",
            o.trials,
            doubles.len(),
            o.lost.len(),
            o.writes,
            o.restarted.len()
        );
        if !o.stale_lived.is_empty() {
            let (p50, max) = spread(&o.stale_lived, |d| format!("{} ms", d.as_millis()));
            let [sent, acked, landed, damaged] = o.stale_writes;
            let _ = writeln!(
                stale,
                "{fault}: the stale copies lived {p50} (p50), {max} (max) after the thaw; \
                 of {sent} writes queued on their sockets while frozen, {acked} were \
                 acknowledged after the thaw, {landed} were on the volume afterwards, and \
                 {damaged} left their pod holding neither it nor the write acknowledged \
                 before the fault (begun by the stale copy, not finished before its kill)"
            );
        }
    }
    report.push_str(&stale);
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
        doubles.is_empty(),
        "two live copies of one identity: {doubles:?}"
    );
    assert_eq!(seen.most.len(), 3, "every pod was seen: {seen:?}");
    for (fault, o) in outcomes {
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

/// The median and the largest of `times`, printed with `show`.
fn spread(times: &[Duration], show: fn(Duration) -> String) -> (String, String) {
    let mut t = times.to_vec();
    t.sort();
    match (t.get(t.len() / 2), t.last()) {
        (Some(p), Some(m)) => (show(*p), show(*m)),
        _ => ("n/a".into(), "n/a".into()),
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `kill SIGNAL PID`, which must succeed.
pub fn run_kill(signal: &str, pid: &str) {
    let status = Command::new("kill").args([signal, pid]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}
