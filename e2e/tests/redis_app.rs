//! A second real application, of another kind: examples/redis, a primary
//! (redis-0) and two replicas that follow `redis-0.redis`, on the README's
//! local stack (process runtime, Debian's redis-server), driven with
//! `petctl exec` and redis-cli inside the pods. A key set on the primary is
//! read on the replicas; the primary deleted comes back with its data (its
//! append-only file on its claim) and the replicas follow it to its new
//! address; a replica deleted comes back in sync.

use std::time::Duration;

use petset_e2e::local::LocalStack;
use petset_e2e::{Petctl, PodRow, binary, repo_root, wait_until};

const DEADLINE: Duration = Duration::from_secs(180);

/// The three members, once all are Ready.
fn members(petctl: &Petctl) -> Vec<PodRow> {
    petctl.wait_ready_prefixed("redis-", 3, DEADLINE)
}

/// `redis-cli -h <pod>.redis ARGS` run inside `pod` (through its own name
/// in the cluster DNS): its output, trimmed, when it succeeded.
fn cli(petctl: &Petctl, pod: &str, args: &[&str]) -> Option<String> {
    let host = format!("{pod}.redis");
    let out = std::process::Command::new(binary("petctl"))
        .args([
            "--server",
            &petctl.server,
            "exec",
            pod,
            "--",
            "redis-cli",
            "-h",
            &host,
        ])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits until `pod` answers `GET key` with `value`.
fn has(petctl: &Petctl, pod: &str, key: &str, value: &str) {
    wait_until(&format!("{pod}: {key} = {value}"), DEADLINE, || {
        (cli(petctl, pod, &["get", key]).as_deref() == Some(value)).then_some(())
    });
}

/// Deletes `pod` and waits until it is back (a new uid), all three Ready.
fn replace(petctl: &Petctl, pod: &str) -> Vec<PodRow> {
    let uid = |petctl: &Petctl| petctl.json(&["get", "pod", pod])["metadata"]["uid"].clone();
    let before = uid(petctl);
    petctl.run(&["delete", "pod", pod]);
    wait_until(&format!("{pod} back"), DEADLINE, || {
        let pods = members(petctl);
        (uid(petctl) != before).then_some(pods)
    })
}

#[test]
fn redis_primary_and_replicas_run_as_a_statefulset_and_keep_their_data() {
    let stack = LocalStack::start("10.86", 10);
    let petctl = Petctl {
        program: binary("petctl"),
        server: stack.scheduler(0),
    };
    let manifest = std::fs::read_to_string(repo_root().join("examples/redis/redis.yaml"))
        .expect("examples/redis");
    petctl.apply(&manifest);
    members(&petctl);
    let role = |pod: &str| {
        cli(&petctl, pod, &["info", "replication"])
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("role:").map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(role("redis-0"), "master");
    assert_eq!(role("redis-1"), "slave");
    assert_eq!(role("redis-2"), "slave");

    // Set on the primary, read on both replicas.
    assert_eq!(
        cli(&petctl, "redis-0", &["set", "pet", "set"]).as_deref(),
        Some("OK")
    );
    has(&petctl, "redis-1", "pet", "set");
    has(&petctl, "redis-2", "pet", "set");

    // The primary deleted: back with its data (append-only file on its
    // claim), and the replicas follow redis-0.redis to it.
    let old_ip = petctl.json(&["get", "pod", "redis-0"])["status"]["podIP"].clone();
    replace(&petctl, "redis-0");
    has(&petctl, "redis-0", "pet", "set");
    assert_eq!(
        cli(&petctl, "redis-0", &["set", "after", "move"]).as_deref(),
        Some("OK")
    );
    has(&petctl, "redis-1", "after", "move");
    has(&petctl, "redis-2", "after", "move");
    let new_ip = petctl.json(&["get", "pod", "redis-0"])["status"]["podIP"].clone();
    eprintln!("redis-0 moved from {old_ip} to {new_ip}");

    // A replica deleted: back, in sync, a replica still.
    replace(&petctl, "redis-2");
    has(&petctl, "redis-2", "after", "move");
    assert_eq!(role("redis-2"), "slave");
}
