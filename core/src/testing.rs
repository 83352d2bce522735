//! A real etcd for tests, started by the test itself.
//!
//! # Guarantees
//! - etcd runs from Debian's `etcd-server` (or `$PETSET_ETCD_BIN`) on free
//!   loopback ports with its data in a temporary folder.
//! - It never outlives the test process: it is started under a small shell
//!   watchdog that reads the test's end of a pipe and stops etcd (and removes
//!   its data) when the pipe closes, which happens however the test process
//!   ends.
//! - [`shared`] gives every test of one process the same etcd, and
//!   [`unique_root`] gives each test its own key prefix, so tests never see
//!   each other's keys.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::StoreConfig;

/// One etcd server process.
#[derive(Debug)]
pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
    // Kept for its lifetime only: dropping it removes the folder.
    _dir: Option<tempfile::TempDir>,
    watchdog: Option<Tied>,
}

/// The etcd all tests of this process share.
pub fn shared() -> &'static Etcd {
    static SHARED: OnceLock<Etcd> = OnceLock::new();
    SHARED.get_or_init(|| Etcd::launch(true))
}

/// A key prefix no other test uses: `/test/<name>-<pid>-<n>`.
pub fn unique_root(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("/test/{name}-{}-{n}-{nanos}", std::process::id())
}

/// The etcd binary: `$PETSET_ETCD_BIN`, else `etcd` on `PATH`, else Debian's.
pub fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PETSET_ETCD_BIN") {
        return PathBuf::from(path);
    }
    for dir in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let candidate = dir.join("etcd");
        if candidate.is_file() {
            return candidate;
        }
    }
    let debian = PathBuf::from("/usr/bin/etcd");
    assert!(
        debian.is_file(),
        "etcd is not installed: run scripts/install-deps (it installs Debian's etcd-server), or set PETSET_ETCD_BIN"
    );
    debian
}

impl Etcd {
    /// Starts a dedicated etcd, for tests that stop or restart it.
    pub fn start() -> Etcd {
        Etcd::launch(false)
    }

    fn launch(shared: bool) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("petset-etcd-")
            .tempdir()
            .expect("creating etcd's data folder");
        let data = dir.path().to_path_buf();
        let mut last_error = String::new();
        // A free port can be taken between our probe and etcd's bind by a
        // test running beside us; try a few times.
        for _ in 0..5 {
            let mut etcd = Etcd {
                client_port: free_port(),
                peer_port: free_port(),
                data: data.clone(),
                _dir: None,
                watchdog: None,
            };
            match etcd.spawn(shared) {
                Ok(()) => {
                    etcd._dir = if shared {
                        // The watchdog removes it when the process ends.
                        let _ = dir.keep();
                        None
                    } else {
                        Some(dir)
                    };
                    return etcd;
                }
                Err(error) => {
                    last_error = error;
                    etcd.stop();
                }
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    fn spawn(&mut self, cleanup_on_exit: bool) -> Result<(), String> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = self.data.join("etcd.log");
        let args: Vec<String> = [
            "--name",
            "test",
            "--data-dir",
            &self.data.join("data").display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("test={peer}"),
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let cleanup = cleanup_on_exit.then_some(self.data.as_path());
        self.watchdog = Some(Tied::spawn_cleaning(&etcd_binary(), &args, &log, cleanup));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if etcd_healthy(self.client_port) {
                return Ok(());
            }
            if self.watchdog.as_ref().is_some_and(|w| !w.running()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "etcd not healthy on {client}; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ))
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A store configuration for one test: this etcd and a root of its own.
    pub fn store_config(&self, test_name: &str) -> StoreConfig {
        StoreConfig {
            endpoints: vec![self.endpoint()],
            root: unique_root(test_name),
        }
    }

    /// The folder etcd keeps its data and log in.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Stops etcd and waits for it to exit; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(error) = self.spawn(false) {
            panic!("etcd did not restart: {error}");
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback TCP port nobody listens on now, reserved for this test
/// process (for a child process to bind). See [`free_ports`].
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first port of the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), Linux's default when unreadable.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// The first of `n` consecutive loopback TCP ports nobody listens on now,
/// reserved for this test process until it exits (for programs that take
/// a base port, such as etcd's client port and the peer port after it).
///
/// Two rules keep a port chosen here from being taken before the child
/// binds it, which a port the kernel hands out for `127.0.0.1:0` does not:
/// - ports come from below the kernel's ephemeral range
///   (`net.ipv4.ip_local_port_range`), which it never gives to outgoing
///   connections or to other processes' `bind(0)`;
/// - each port is reserved with an exclusive lock on a file under
///   `$TMPDIR/petset-test-ports`, held for the life of the process, so
///   concurrent test processes never pick the same one.
pub fn free_ports(n: u16) -> u16 {
    use std::sync::Mutex;
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let n = n.max(1);
    let dir = std::env::temp_dir().join("petset-test-ports");
    std::fs::create_dir_all(&dir).expect("a folder for port reservations");
    let (low, high) = (20000u16, ephemeral_low().clamp(20000 + 1024, 32768));
    let span = high - low - n;
    // Start where another process is unlikely to: by pid and the clock.
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for step in 0..span as u64 {
        let first = low + ((seed.wrapping_add(step * 7919)) % span as u64) as u16;
        let mut locks = Vec::new();
        let all = (first..first + n).all(|port| {
            let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(port.to_string()))
            else {
                return false;
            };
            if file.try_lock().is_err() || TcpListener::bind(("127.0.0.1", port)).is_err() {
                return false;
            }
            locks.push(file);
            true
        });
        if all {
            held.extend(locks);
            return first;
        }
    }
    panic!("no {n} free consecutive loopback ports in {low}..{high}");
}

/// Whether the etcd member whose client port is `port` (on loopback)
/// answers its health check: it has a leader and a quorum.
pub fn etcd_healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// Every key and value under `store`'s root, to show that a refused request
/// changed nothing.
pub async fn all_keys(store: &StoreConfig) -> Vec<(String, Vec<u8>)> {
    let mut client = etcd_client::Client::connect(&store.endpoints, None)
        .await
        .expect("etcd answers");
    let response = client
        .get(
            store.root.clone(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("etcd answers");
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect()
}

/// Polls `check` every 20 ms until it answers `Some`, or panics after
/// `timeout` naming `what` was awaited. Tests wait on conditions, never on
/// the clock.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A program run for a test that cannot outlive the test process: a shell
/// watchdog kills it when the test's end of its stdin pipe closes (the test
/// ended, even by a crash).
#[derive(Debug)]
pub struct Tied {
    watchdog: Child,
    pid: String,
}

impl Tied {
    /// Starts `program args`, its output appended to `log`.
    pub fn spawn(program: &Path, args: &[String], log: &Path) -> Tied {
        Tied::spawn_cleaning(program, args, log, None)
    }

    /// As [`Tied::spawn`], and removes `cleanup` once the program is gone
    /// (even when the test process crashed).
    pub fn spawn_cleaning(
        program: &Path,
        args: &[String],
        log: &Path,
        cleanup: Option<&Path>,
    ) -> Tied {
        let script = r#"
            "$PROGRAM" "$@" >>"$LOG" 2>&1 &
            pid=$!
            echo "$pid"
            read -r _ || true
            kill "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            if [ -n "$CLEANUP" ]; then rm -rf "$CLEANUP"; fi
        "#;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("petset-test-watchdog")
            .args(args)
            .env("PROGRAM", program)
            .env("LOG", log)
            .env("CLEANUP", cleanup.map(Path::as_os_str).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning sh");
        let mut pid = String::new();
        let mut out = watchdog.stdout.take().expect("piped");
        let mut byte = [0u8; 1];
        while out.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
            pid.push(byte[0] as char);
        }
        Tied { watchdog, pid }
    }

    /// The program's pid.
    pub fn pid(&self) -> &str {
        &self.pid
    }

    /// Whether the program still runs (it may have exited by itself).
    pub fn running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .is_ok_and(|stat| !stat.contains(") Z "))
    }

    /// Kills the program with SIGKILL, as a crash would: it cannot clean up.
    pub fn kill(&mut self) {
        let _ = Command::new("kill").args(["-KILL", &self.pid]).status();
        self.stop();
    }

    /// Stops the program (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

impl Drop for Tied {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Timing for the benchmarks under `benches/`: percentiles of sequential
/// calls, reported as a ratio to a baseline measured in the same run.
pub mod bench {
    use std::time::{Duration, Instant};

    /// The samples of one operation.
    #[derive(Debug)]
    pub struct Stats {
        /// What was measured.
        pub name: &'static str,
        /// One duration per call.
        pub samples: Vec<Duration>,
    }

    impl Stats {
        /// The `p` quantile (0.5 for the median).
        pub fn percentile(&self, p: f64) -> Duration {
            let mut sorted = self.samples.clone();
            sorted.sort();
            sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
        }
    }

    /// Times `rounds` sequential calls of `f(i)`, after `rounds / 10`
    /// warm-up calls (given indices from `usize::MAX` down).
    pub async fn time<F, Fut>(name: &'static str, rounds: usize, mut f: F) -> Stats
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        for i in 0..rounds / 10 {
            f(usize::MAX - i).await;
        }
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let start = Instant::now();
            f(i).await;
            samples.push(start.elapsed());
        }
        Stats { name, samples }
    }

    /// The baseline every service benchmark compares with: one raw etcd
    /// compare-and-put transaction from this process, on fresh keys under
    /// `store`'s root.
    pub async fn raw_etcd_txn(store: &crate::store::StoreConfig, rounds: usize) -> Stats {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        let client = etcd_client::Client::connect(&store.endpoints, None)
            .await
            .expect("etcd answers");
        time("raw etcd txn (baseline)", rounds, |i| {
            let key = format!("{}/raw/{i}", store.root);
            let mut client = client.clone();
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, "x", None)]);
                client.txn(txn).await.expect("etcd answers");
            }
        })
        .await
    }

    /// The baseline of every lease-based failover: a key put on a lease of
    /// `ttl` seconds, renewed every third of it, the renewals stopped at a
    /// point of their period that moves with `i` (as a kill lands); the
    /// time from the last renewal until a watch sees the key deleted.
    pub async fn raw_lease_expiry(endpoint: &str, root: &str, ttl: i64, i: usize) -> Duration {
        use etcd_client::{EventType, PutOptions, WatchOptions};
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("etcd answers");
        let key = format!("{root}/raw-lease/{i}");
        let lease = client.lease_grant(ttl, None).await.expect("a lease").id();
        client
            .put(key.as_str(), "x", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("etcd answers");
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.expect("renewing");
        let period = Duration::from_millis(ttl as u64 * 1000 / 3);
        keeper.keep_alive().await.expect("renewing");
        answers.message().await.expect("renewed");
        // The kill lands somewhere in the renewal period.
        let phase = period.mul_f64((i % 10) as f64 / 10.0);
        tokio::time::sleep(phase).await;
        let mut events = client
            .watch(key.as_str(), Some(WatchOptions::new()))
            .await
            .expect("watching");
        let start = Instant::now();
        drop(keeper);
        drop(answers);
        while let Ok(Some(r)) = events.message().await {
            if r.events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                break;
            }
        }
        // Counted from the last renewal.
        start.elapsed() + phase
    }

    /// Prints p50 and p99 and the ratio of the p50 to the baseline's.
    pub fn report(stats: &Stats, baseline: &Stats) {
        let (p50, p99, b50) = (
            stats.percentile(0.5),
            stats.percentile(0.99),
            baseline.percentile(0.5),
        );
        println!(
            "{:<40} p50 {:>9.1?} p99 {:>9.1?}  = {:>5.2}x {} (p50)",
            stats.name,
            p50,
            p99,
            p50.as_secs_f64() / b50.as_secs_f64(),
            baseline.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_bindable_distinct_and_outside_the_ephemeral_range() {
        let ephemeral_low = ephemeral_low();
        let mut seen = std::collections::BTreeSet::new();
        for n in [1u16, 2, 3, 1, 2, 3, 1, 1] {
            let first = free_ports(n);
            for port in first..first + n {
                assert!(port < ephemeral_low, "{port} is in the ephemeral range");
                assert!(seen.insert(port), "{port} was handed out twice");
                // Free to bind now, and its lock is held by this process.
                drop(TcpListener::bind(("127.0.0.1", port)).unwrap());
                let lock = std::fs::OpenOptions::new()
                    .write(true)
                    .open(
                        std::env::temp_dir()
                            .join("petset-test-ports")
                            .join(port.to_string()),
                    )
                    .unwrap();
                assert!(lock.try_lock().is_err(), "{port} is not reserved");
            }
        }
    }
}
