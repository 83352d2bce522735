//! Leader failover: the time from SIGKILL of the leading scheduler-svc
//! replica to the other replica leading (its `petset_scheduler_leader`
//! gauge, polled every 5 ms), with two replicas on one etcd.
//!
//! Baselines, measured in the same run against the same etcd:
//! - raw lease expiry: a key put on a lease of the same TTL (2 s), renewed
//!   every third of it like the leader's, the renewals stopped at a random
//!   point of their period (as a SIGKILL lands), until a watch sees the key
//!   deleted: what any lease-based election on this etcd costs;
//! - one raw etcd compare-and-put transaction (the store's write latency).
//!
//! Flapping: the leader changes seen in 20 s while 8 tasks keep etcd busy
//! with compare-and-put transactions (no kill): there should be none.
//!
//! Run with `cargo build --workspace --bins && cargo bench -p petset-e2e
//! --bench failover` (etcd installed: `scripts/install-deps`). Results go in
//! BENCHMARKS.md.

use std::time::{Duration, Instant};

use petset_core::testing::Tied;
use petset_core::testing::bench::{Stats, raw_etcd_txn, raw_lease_expiry, report};
use petset_e2e::{binary, free_port, http};

const TRIALS: usize = 10;
const TTL: i64 = 2;

fn leads(addr: &str) -> bool {
    let (_, metrics) = http(&["-m", "1", &format!("http://{addr}/metrics")]);
    metrics.lines().any(|l| l == "petset_scheduler_leader 1")
}

struct Replicas {
    endpoint: String,
    root: String,
    dir: tempfile::TempDir,
    addrs: [String; 2],
    procs: [Option<Tied>; 2],
}

impl Replicas {
    fn start(&mut self, i: usize) {
        // identity-svc and storage-svc are not needed to elect a leader;
        // their addresses only have to parse.
        let args = vec![
            "--id".to_string(),
            format!("bench-{i}"),
            "--etcd-endpoints".into(),
            self.endpoint.clone(),
            "--etcd-prefix".into(),
            self.root.clone(),
            "--grpc-addr".into(),
            self.addrs[i].clone(),
            "--http-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--identity-addr".into(),
            "http://127.0.0.1:9".into(),
            "--storage-addr".into(),
            "http://127.0.0.1:9".into(),
            "--leader-ttl".into(),
            TTL.to_string(),
        ];
        let log = self.dir.path().join(format!("scheduler-{i}.log"));
        self.procs[i] = Some(Tied::spawn(&binary("scheduler-svc"), &args, &log));
    }

    /// Waits until exactly one replica leads; which.
    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match (leads(&self.addrs[0]), leads(&self.addrs[1])) {
                (true, false) => return 0,
                (false, true) => return 1,
                _ => {}
            }
            assert!(Instant::now() < deadline, "no leader in 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs the leader; the time until the other one leads. The killed
    /// one is started again (and waits as a follower).
    fn failover(&mut self) -> Duration {
        let leader = self.leader();
        let other = 1 - leader;
        // Both up: the follower answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(&["-m", "1", &format!("http://{}/metrics", self.addrs[other])]).0 != 200 {
            assert!(Instant::now() < deadline, "the follower never answered");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut killed = self.procs[leader].take().expect("running");
        let start = Instant::now();
        killed.kill();
        while !leads(&self.addrs[other]) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no failover in 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = start.elapsed();
        self.start(leader);
        took
    }
}

#[tokio::main]
async fn main() {
    let etcd = petset_core::testing::Etcd::start();
    let store = etcd.store_config("failover");
    let mut replicas = Replicas {
        endpoint: etcd.endpoint(),
        root: store.root.clone(),
        dir: tempfile::tempdir().unwrap(),
        addrs: [
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        ],
        procs: [None, None],
    };
    replicas.start(0);
    replicas.start(1);

    let txn = raw_etcd_txn(&store, 200).await;
    let mut expiry = Vec::new();
    for i in 0..TRIALS {
        expiry.push(raw_lease_expiry(&etcd.endpoint(), &store.root, TTL, i).await);
    }
    let expiry = Stats {
        name: "raw etcd lease expiry, TTL 2 s (baseline)",
        samples: expiry,
    };
    let mut failover = Vec::new();
    for _ in 0..TRIALS {
        failover.push(tokio::task::block_in_place(|| replicas.failover()));
    }
    let failover = Stats {
        name: "leader failover after SIGKILL",
        samples: failover,
    };
    // Flapping under load: etcd kept busy, nobody killed.
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (busy, endpoint, root) = (busy.clone(), etcd.endpoint(), store.root.clone());
        writers.push(tokio::spawn(async move {
            let mut client = etcd_client::Client::connect([endpoint], None)
                .await
                .unwrap();
            let mut n = 0u64;
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("{root}/load/{w}/{n}");
                let _ = client.put(key, vec![0u8; 256], None).await;
                n += 1;
            }
            n
        }));
    }
    let (mut changes, mut last) = (0, replicas.leader());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let now = tokio::task::block_in_place(|| replicas.leader());
        if now != last {
            changes += 1;
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap();
    }
    println!(
        "flapping: {changes} leader changes in 20 s while etcd took {writes} writes ({:.0}/s) from 8 writers",
        writes as f64 / 20.0
    );
    println!(
        "etcd: one compare-and-put p50 {:.2?}, p99 {:.2?}",
        txn.percentile(0.5),
        txn.percentile(0.99)
    );
    report(&expiry, &txn);
    report(&failover, &expiry);
    println!(
        "leader failover: max {:.2?} over {TRIALS} kills (TTL {TTL} s)",
        failover.samples.iter().max().unwrap()
    );
}
