//! petset-shim as the agent runs it: a process group leader with a pipe
//! on its input, holding the node's lease deadline over one container.

use std::io::Write as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use node_agent::fence::{boottime_ns, line};

const WAIT: Duration = Duration::from_secs(20);

/// The shim over `sleep 1000` (its pid written to `pidfile`), deadline
/// `after` from now.
fn start(after: Duration, dir: &std::path::Path) -> (Child, std::path::PathBuf) {
    let pidfile = dir.join("container.pid");
    let deadline = boottime_ns() + after.as_nanos() as u64;
    let child = shim(deadline, "echo $$ > \"$0\"; exec sleep 1000", &pidfile);
    (child, pidfile)
}

/// The shim as the agent starts it (a process group leader, a pipe on its
/// input) over `sh -c script arg`, deadline `deadline` (boot-time ns).
fn shim(deadline: u64, script: &str, arg: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_petset-shim"))
        .arg(deadline.to_string())
        .args(["--", "sh", "-c", script])
        .arg(arg)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn container_pid(pidfile: &std::path::Path) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(pid) = std::fs::read_to_string(pidfile)
            && !pid.trim().is_empty()
        {
            return pid.trim().to_string();
        }
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Waits for the shim to exit; its status and what it wrote.
fn ended(mut child: Child) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        assert!(Instant::now() < deadline, "the shim never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn at_the_deadline_the_container_and_its_group_are_killed() {
    let dir = tempfile::tempdir().unwrap();
    // Two seconds: time enough to start on a loaded machine.
    let (child, pidfile) = start(Duration::from_secs(2), dir.path());
    let pid = container_pid(&pidfile);
    let (status, err) = ended(child);
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(
        err.contains("was not confirmed before the deadline"),
        "{err}"
    );
    assert!(!alive(&pid), "the container outlived its deadline");
}

#[test]
fn deadlines_the_agent_writes_keep_it_running_and_it_dies_when_they_stop() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (mut child, pidfile) = start(Duration::from_secs(2), dir.path());
    let pid = container_pid(&pidfile);
    let mut input = child.stdin.take().unwrap();
    // A later deadline, then an older one written late: only forward.
    input
        .write_all(line(boottime_ns() + 60_000_000_000).as_bytes())
        .unwrap();
    input.write_all(line(1).as_bytes()).unwrap();
    input.flush().unwrap();
    // Well past the first deadline (the shim looks again every 250 ms at
    // most), the container still runs.
    while started.elapsed() < Duration::from_secs(3) {
        assert!(alive(&pid), "killed despite a later deadline");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The agent goes away: its end of the pipe closes.
    drop(input);
    let (status, err) = ended(child);
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(err.contains("closed its pipe"), "{err}");
    assert!(!alive(&pid));
}

#[test]
fn nothing_starts_past_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("never");
    let out = Command::new(env!("CARGO_BIN_EXE_petset-shim"))
        .arg((boottime_ns() - 1).to_string())
        .args(["--", "sh", "-c", "echo $$ > \"$0\""])
        .arg(&pidfile)
        .process_group(0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(137));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has passed"));
    assert!(!pidfile.exists(), "the container started");
}

#[test]
fn it_ends_as_its_container_does_and_passes_sigterm_on() {
    let dir = tempfile::tempdir().unwrap();
    let far = boottime_ns() + 60_000_000_000;
    // The agent's end of the pipe stays open (a closed one is a fence).
    let mut child = shim(far, "exit 3", dir.path());
    let input = child.stdin.take();
    let (status, err) = ended(child);
    drop(input);
    assert_eq!(status.code(), Some(3), "{status:?} {err}");

    // SIGTERM to the group (how the agent stops a pod): the container
    // traps it and exits 0; the shim stays to report that.
    let script = "trap 'exit 0' TERM; echo $$ > \"$0\"; while :; do sleep 0.05; done";
    let pidfile = dir.path().join("trap.pid");
    let mut child = shim(far, script, &pidfile);
    let _input = child.stdin.take();
    container_pid(&pidfile);
    let group = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process_group(group, rustix::process::Signal::TERM).unwrap();
    let (status, _) = ended(child);
    assert_eq!(status.code(), Some(0), "{status:?}");
}
