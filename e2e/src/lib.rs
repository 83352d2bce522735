//! Helpers for petset's end-to-end tests, which drive the built binaries and
//! the README's scripts as a user would.
//!
//! # Layout
//! - [`repo_root`], [`binary`]: where the scripts and built binaries are.
//! - [`free_port`]: a loopback port nobody listens on.
//! - [`run`]: runs a command and returns its output, failing loudly.
//! - [`wait_until`]: polls a condition with a deadline; [`http`]: curl.
//! - [`Petctl`]: petctl against one scheduler-svc, pods parsed from JSON.
//! - [`local`]: the README's local stack on ports of its own, the process
//!   table, a sampler of pod copies.
//! - [`chaos`]: the fault-injection harness and its report.

pub mod chaos;
pub mod etcd;
pub mod local;
pub mod node_fault;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e lives in the repository")
        .to_path_buf()
}

/// A binary built by `cargo build` (the README's test command builds them
/// before the tests run).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

pub use petset_core::testing::{free_port, free_ports};

/// Runs `program args`, and answers its standard output; panics with both
/// outputs when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Polls `check` every 200 ms until it answers, for at most `deadline`;
/// panics naming `what` after that.
pub fn wait_until<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The HTTP status of a request (curl's `-w %{http_code}`) and the body; 0
/// when nothing answered.
pub fn http(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// curl's answer when the request succeeded (3 s at most), else `None`.
pub fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "-m", "3"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the scheduler-svc replica at `addr` (host:port) leads, from its
/// `petset_scheduler_leader` gauge.
pub fn leads(addr: &str) -> bool {
    let (code, metrics) = http(&[&format!("http://{addr}/metrics")]);
    code == 200 && metrics.lines().any(|l| l == "petset_scheduler_leader 1")
}

/// The value of the sample `series` (a metric name with its labels as
/// Prometheus prints them, e.g. `petset_pods{phase="Running"}`) on the
/// `/metrics` page of the process at `addr` (host:port); `None` when the
/// page or the series is missing.
pub fn metric(addr: &str, series: &str) -> Option<f64> {
    let (code, page) = http(&[&format!("http://{addr}/metrics")]);
    if code != 200 {
        return None;
    }
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A pod as `petctl get pods -o json` shows it: (name, ready, podIP, node,
/// restarts).
pub type PodRow = (String, bool, String, String, i64);

/// petctl against one scheduler-svc.
#[derive(Debug, Clone)]
pub struct Petctl {
    /// The petctl binary.
    pub program: PathBuf,
    /// `--server`.
    pub server: String,
}

impl Petctl {
    /// Runs petctl; its standard output (panics when it fails).
    pub fn run(&self, args: &[&str]) -> String {
        let mut all = vec!["--server", &self.server];
        all.extend_from_slice(args);
        run(self.program.to_str().expect("a UTF-8 path"), &all)
    }

    /// `petctl apply -f -` of `manifest`; its standard output (panics when
    /// it fails).
    pub fn apply(&self, manifest: &str) -> String {
        self.try_apply(manifest)
            .unwrap_or_else(|e| panic!("petctl apply failed: {e}\n{manifest}"))
    }

    /// `petctl apply -f -` of `manifest`: its standard output, or its
    /// standard error when it fails.
    pub fn try_apply(&self, manifest: &str) -> Result<String, String> {
        use std::io::Write as _;
        let mut child = std::process::Command::new(&self.program)
            .args(["--server", &self.server, "apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("petctl starts");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(manifest.as_bytes())
            .expect("petctl reads its manifest");
        let out = child.wait_with_output().expect("petctl runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// How many nodes `petctl get nodes` shows Ready.
    pub fn ready_nodes(&self) -> usize {
        self.run(&["get", "nodes"])
            .lines()
            .filter(|l| l.contains(" Ready "))
            .count()
    }

    /// `petctl get sc`: whether the class `name` of `provisioner` is shown
    /// as the default.
    pub fn has_default_class(&self, name: &str, provisioner: &str) -> bool {
        self.run(&["get", "sc"])
            .lines()
            .any(|l| l.starts_with(&format!("{name} (default)")) && l.contains(provisioner))
    }

    /// Runs petctl with `-o json`; the parsed answer.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.run(&all)).expect("petctl prints JSON")
    }

    /// The pods, by name.
    pub fn pods(&self) -> Vec<PodRow> {
        let list = self.json(&["get", "pods"]);
        let mut out: Vec<PodRow> = list["items"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    p["status"]["conditions"][0]["status"] == "True"
                        && p["metadata"]["deletionTimestamp"].is_null(),
                    p["status"]["podIP"].as_str().unwrap_or("").to_string(),
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                    p["status"]["containerStatuses"][0]["restartCount"]
                        .as_i64()
                        .unwrap_or(0),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until `count` pods whose names start with `prefix` exist and
    /// are all Ready (other pods of the stack aside); those pods.
    pub fn wait_ready_prefixed(
        &self,
        prefix: &str,
        count: usize,
        deadline: Duration,
    ) -> Vec<PodRow> {
        wait_until(&format!("{count} Ready {prefix}* pods"), deadline, || {
            let pods: Vec<PodRow> = self
                .pods()
                .into_iter()
                .filter(|p| p.0.starts_with(prefix))
                .collect();
            (pods.len() == count && pods.iter().all(|p| p.1)).then_some(pods)
        })
    }

    /// Waits until exactly `names` exist and are all Ready.
    pub fn wait_ready(&self, names: &[&str], deadline: Duration) -> Vec<PodRow> {
        wait_until(&format!("pods {names:?} Ready"), deadline, || {
            let pods = self.pods();
            let ok = pods.iter().map(|p| p.0.as_str()).collect::<Vec<_>>() == names
                && pods.iter().all(|p| p.1);
            ok.then_some(pods)
        })
    }
}
