//! Pod failover: the time from a fault on the node that runs a pod to that
//! pod Ready on another node, on the README's local stack (`scripts/up`,
//! node lease TTL 3 s, kubia at two replicas). Faults: the node's agent
//! hung (SIGSTOP, resumed after) and killed (SIGKILL, started again after),
//! `TRIALS` of each, always on a node that runs that one pod only. The pod
//! is watched with `petctl get pods` in a loop (each call takes a few tens
//! of milliseconds: that is the resolution).
//!
//! Baselines, measured in the same run against the stack's etcd:
//! - raw lease expiry: a key on a lease of the node lease's TTL, renewed
//!   every third of it, the renewals stopped at a random point of their
//!   period, until a watch sees the key deleted: the floor of any
//!   lease-based failover on this etcd;
//! - one raw etcd compare-and-put transaction.
//!
//! Run with `cargo build --workspace --bins && cargo bench -p petset-e2e
//! --bench pod_failover`. Results go in BENCHMARKS.md.

use std::time::{Duration, Instant};

use petset_core::store::StoreConfig;
use petset_core::testing::bench::{Stats, raw_etcd_txn, raw_lease_expiry, report};
use petset_e2e::chaos::{cmdline, run_kill};
use petset_e2e::local::{LocalStack, Resume};
use petset_e2e::{Petctl, PodRow, binary, wait_until};

const TRIALS: usize = 10;
const TTL: u64 = 3;
const DEADLINE: Duration = Duration::from_secs(120);

/// A pod that is Ready and alone on its node, and that node.
fn lone_pod(petctl: &Petctl) -> (String, String) {
    wait_until("a Ready pod alone on its node", DEADLINE, || {
        let pods = petctl.pods();
        let ready = pods.iter().filter(|p| p.1).count() == 2;
        pods.iter()
            .find(|p| ready && pods.iter().filter(|q| q.3 == p.3).count() == 1)
            .map(|p| (p.0.clone(), p.3.clone()))
    })
}

/// Time from `fault` until `pod` is Ready off `node`.
fn until_moved(petctl: &Petctl, pod: &str, node: &str, fault: impl FnOnce()) -> Duration {
    fault();
    let start = Instant::now();
    loop {
        let pods: Vec<PodRow> = petctl.pods();
        if pods.iter().any(|p| p.0 == pod && p.1 && p.3 != node) {
            return start.elapsed();
        }
        assert!(start.elapsed() < DEADLINE, "{pod} never moved off {node}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn all_nodes_ready(petctl: &Petctl) {
    wait_until("three Ready nodes", DEADLINE, || {
        (petctl.ready_nodes() == 3).then_some(())
    });
}

fn main() {
    let stack = LocalStack::start("127.83", TTL);
    let petctl = Petctl {
        program: binary("petctl"),
        server: stack.scheduler(0),
    };
    let store = StoreConfig {
        endpoints: vec![format!("http://127.0.0.1:{}", stack.ports.etcd)],
        root: "/bench-pod-failover".into(),
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let txn = runtime.block_on(raw_etcd_txn(&store, 200));
    let expiry = runtime.block_on(async {
        let mut samples = Vec::new();
        for i in 0..TRIALS {
            samples.push(raw_lease_expiry(&store.endpoints[0], &store.root, TTL as i64, i).await);
        }
        samples
    });
    let expiry = Stats {
        name: "raw etcd lease expiry, TTL 3 s (baseline)",
        samples: expiry,
    };

    let mut hung = Vec::new();
    for _ in 0..TRIALS {
        let (pod, node) = lone_pod(&petctl);
        let mut resume = None;
        hung.push(until_moved(&petctl, &pod, &node, || {
            let pid = stack.running_agent(&node);
            run_kill("-STOP", &pid);
            resume = Some(Resume(pid));
        }));
        drop(resume);
        all_nodes_ready(&petctl);
    }
    let mut killed = Vec::new();
    let mut again = Vec::new();
    for i in 0..TRIALS {
        let (pod, node) = lone_pod(&petctl);
        let pid = stack.running_agent(&node);
        let args = cmdline(&pid);
        killed.push(until_moved(&petctl, &pod, &node, || {
            run_kill("-KILL", &pid)
        }));
        again.push(petset_core::testing::Tied::spawn(
            std::path::Path::new(&args[0]),
            &args[1..],
            &stack.dir.path().join(format!("{node}-again-{i}.log")),
        ));
        all_nodes_ready(&petctl);
    }
    let hung = Stats {
        name: "pod Ready elsewhere after agent SIGSTOP",
        samples: hung,
    };
    let killed = Stats {
        name: "pod Ready elsewhere after agent SIGKILL",
        samples: killed,
    };
    println!(
        "etcd: one compare-and-put p50 {:.2?}, p99 {:.2?}",
        txn.percentile(0.5),
        txn.percentile(0.99)
    );
    report(&expiry, &txn);
    report(&hung, &expiry);
    report(&killed, &expiry);
    for s in [&expiry, &hung, &killed] {
        println!(
            "{}: min {:.2?}, max {:.2?} over {TRIALS}",
            s.name,
            s.samples.iter().min().expect("samples"),
            s.samples.iter().max().expect("samples")
        );
    }
    drop(again);
}
