//! Faults injected into the README's local stack (process runtime), N
//! trials of each (`PETSET_CHAOS_TRIALS`, default 3), with an independent
//! witness: a sampler reads the process table every ~2 ms for the whole
//! run and counts the live copies of each pod, and every pod is sent a
//! write before each fault that must still be there after it.
//!
//! Faults (`PETSET_CHAOS_FAULTS`, a comma-separated subset of the names in
//! brackets, default all): a node agent hung (`hung`: SIGSTOP, resumed once
//! its pods moved), a node agent killed (`killed`: SIGKILL, started again
//! once its pods moved), a whole node frozen (`frozen`: agent, shims and
//! pods in one cgroup, frozen until its pods moved, then thawed), a node
//! cut off from the control plane (`cut`: its packets to the control
//! plane's ports dropped until its pods moved), and the leading or the
//! following scheduler-svc replica killed (`leader`, `follower`: SIGKILL,
//! started again). The report (per fault: trials, moments with two live
//! copies, time until the moved pods were Ready elsewhere, acknowledged
//! writes lost, pods restarted by a scheduler kill; for the frozen node,
//! how long its stale copies lived after the thaw and what they could
//! still write) is printed, and written to `PETSET_CHAOS_REPORT` when set.
//! RELIABILITY.md holds a run with N = 50.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use petset_e2e::chaos::{
    Chaos, DEADLINE, Outcome, PODS, cmdline, node_of, report, restarted, run_kill, trials,
};
use petset_e2e::local::{Resume, Sampler, alive, process_of, processes};
use petset_e2e::{binary, free_port, wait_until};

const LEASE_TTL: u64 = 3;
const FAULTS: [&str; 6] = ["hung", "killed", "frozen", "cut", "leader", "follower"];

#[test]
fn no_identity_runs_twice_and_no_acknowledged_write_is_lost_under_faults() {
    let trials = trials();
    let faults: Vec<String> = std::env::var("PETSET_CHAOS_FAULTS")
        .map(|f| f.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_else(|_| FAULTS.iter().map(|f| f.to_string()).collect());
    for f in &faults {
        assert!(
            FAULTS.contains(&f.as_str()),
            "unknown fault {f:?}: {FAULTS:?}"
        );
    }
    let mut chaos = Chaos::start("10.78", LEASE_TTL, &[]);
    let sampler = Sampler::start("10.78");
    let mut outcomes: BTreeMap<&str, Outcome> = BTreeMap::new();

    for trial in 0..trials {
        for (i, fault) in faults.iter().enumerate() {
            // Each fault takes a different pod's node each trial.
            let pod = PODS[(trial as usize + i) % 3];
            let tag = format!("{trial}-{fault}");
            match fault.as_str() {
                "hung" => agent_hung(&chaos, pod, &tag, &mut outcomes),
                "killed" => agent_killed(&mut chaos, pod, &tag, &mut outcomes),
                "frozen" => node_frozen(&chaos, pod, &tag, &mut outcomes),
                "cut" => node_cut_off(&chaos, pod, &tag, &mut outcomes),
                "leader" => scheduler_killed(&mut chaos, true, &tag, &mut outcomes),
                _ => scheduler_killed(&mut chaos, false, &tag, &mut outcomes),
            }
        }
    }
    let seen = sampler.stop();

    report(
        &format!("chaos: {trials} trials of each fault, node lease TTL {LEASE_TTL} s"),
        trials,
        &outcomes,
        &seen,
    );
}

/// A hung agent: its shims kill its pods at the lease deadline.
fn agent_hung(chaos: &Chaos, pod: &str, tag: &str, outcomes: &mut BTreeMap<&str, Outcome>) {
    let (node, on) = node_of(&chaos.ready(), pod);
    let acked = chaos.write_all(tag);
    let resume = Resume(chaos.stack.running_agent(&node));
    run_kill("-STOP", &resume.0);
    let start = Instant::now();
    chaos.moved_off(&node, &on);
    let took = start.elapsed();
    drop(resume);
    all_nodes_ready(chaos);
    let o = outcomes.entry("agent hung (SIGSTOP)").or_default();
    o.trial(chaos, &acked);
    o.replaced.push((on.len(), took));
}

/// A killed agent: its shims see the pipe close and kill at once. It is
/// started again, in its node's cgroup.
fn agent_killed(chaos: &mut Chaos, pod: &str, tag: &str, outcomes: &mut BTreeMap<&str, Outcome>) {
    let (node, on) = node_of(&chaos.ready(), pod);
    let acked = chaos.write_all(tag);
    let pid = chaos.stack.running_agent(&node);
    let args = chaos.cgroups.command_in(&node, &cmdline(&pid));
    run_kill("-KILL", &pid);
    let start = Instant::now();
    chaos.moved_off(&node, &on);
    let took = start.elapsed();
    chaos.start_again(&args, &format!("{node}-again-{tag}.log"));
    all_nodes_ready(chaos);
    let o = outcomes.entry("agent killed (SIGKILL)").or_default();
    o.trial(chaos, &acked);
    o.replaced.push((on.len(), took));
}

/// The whole node frozen, agent, shims and pods together (a paused VM):
/// nothing on it runs, so nothing on it can fence. Its lease expires and
/// its pods run elsewhere; then it is thawed. Measured: how long its stale
/// copies lived after the thaw, and whether a write queued on a stale
/// copy's socket while it was frozen got through.
fn node_frozen(chaos: &Chaos, pod: &str, tag: &str, outcomes: &mut BTreeMap<&str, Outcome>) {
    let pods = chaos.ready();
    let (node, on) = node_of(&pods, pod);
    let acked = chaos.write_all(tag);
    let stale: Vec<(String, String, String)> = pods
        .iter()
        .filter(|p| on.contains(&p.0))
        .map(|p| {
            let pid = process_of(&p.0, &p.2).expect("the pod's process");
            (p.0.clone(), p.2.clone(), pid)
        })
        .collect();
    let mut frozen = chaos.cgroups.freeze(&node);
    let start = Instant::now();
    chaos.moved_off(&node, &on);
    let took = start.elapsed();

    // A write to each stale copy, connected and sent while it is frozen
    // (the kernel completes the handshake and buffers the request).
    let mut later = BTreeMap::new();
    let mut queued = Vec::new();
    for (name, ip, _) in &stale {
        let value = format!("{tag}-stale-{name}");
        if let Some(stream) = send_post(ip, &value) {
            later.insert(name.clone(), value.clone());
            queued.push((name.clone(), value, stream));
        }
    }
    let stale_pids: Vec<String> = stale.iter().map(|s| s.2.clone()).collect();
    let thawed = Instant::now();
    frozen.thaw();
    let deadline = thawed + DEADLINE;
    while stale_pids.iter().any(|p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "stale copies alive: {stale_pids:?}"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    let lived = thawed.elapsed();
    let mut writes = [0u32; 4];
    for (name, value, mut stream) in queued {
        writes[0] += 1;
        let mut answer = String::new();
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.read_to_string(&mut answer);
        if answer.contains("Data stored on pod") {
            writes[1] += 1;
        }
        if chaos.value(&name).as_ref() == Some(&value) {
            writes[2] += 1;
        }
    }
    drop(frozen);
    all_nodes_ready(chaos);
    let o = outcomes
        .entry("whole node frozen (cgroup freezer)")
        .or_default();
    o.trial_stale(chaos, &acked, &later);
    o.replaced.push((on.len(), took));
    o.resumed.push((thawed, stale_pids));
    o.stale_lived.push(lived);
    for (sum, n) in o.stale_writes.iter_mut().zip(writes) {
        *sum += n;
    }
}

/// The node cut off from the control plane: what its processes send to the
/// control plane's ports, and anything sent to its agent, is dropped (its
/// connections hang; nothing is refused). Its agent cannot renew, so its
/// pods are fenced on the node and run elsewhere once the lease expired.
fn node_cut_off(chaos: &Chaos, pod: &str, tag: &str, outcomes: &mut BTreeMap<&str, Outcome>) {
    let (node, on) = node_of(&chaos.ready(), pod);
    let acked = chaos.write_all(tag);
    let ports = &chaos.stack.ports;
    let control = [
        ports.etcd,
        ports.etcd + 2,
        ports.etcd + 4,
        ports.identity,
        ports.storage,
        ports.schedulers[0],
        ports.schedulers[1],
    ];
    let n: u16 = node.trim_start_matches("node-").parse().expect("node-N");
    let cut = chaos.cgroups.cut_off(&node, &control, ports.agents + n - 1);
    let start = Instant::now();
    chaos.moved_off(&node, &on);
    let took = start.elapsed();
    drop(cut);
    all_nodes_ready(chaos);
    let o = outcomes
        .entry("node cut off (packets dropped)")
        .or_default();
    o.trial(chaos, &acked);
    o.replaced.push((on.len(), took));
}

/// A scheduler replica killed, the leader or the follower: no pod restarts
/// over three node lease TTLs. It is started again.
fn scheduler_killed(
    chaos: &mut Chaos,
    leader: bool,
    tag: &str,
    outcomes: &mut BTreeMap<&str, Outcome>,
) {
    let acked = chaos.write_all(tag);
    let leading = wait_until("one scheduler replica to lead", DEADLINE, || {
        chaos.stack.leader()
    });
    let (victim, other) = if leader {
        (leading, 1 - leading)
    } else {
        (1 - leading, leading)
    };
    let before = chaos.pod_processes();
    let pid = processes(&[
        "scheduler-svc",
        &format!("--grpc-addr {}", chaos.stack.scheduler(victim)),
    ]);
    assert_eq!(pid.len(), 1, "{pid:?}");
    let mut args = cmdline(&pid[0]);
    run_kill("-KILL", &pid[0]);
    let killed = Instant::now();
    chaos.petctl.server = chaos.stack.scheduler(other);
    let nodes = chaos.petctl.ready_nodes();
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
    let after = chaos.pod_processes();
    let name = if leader {
        "leading scheduler killed (SIGKILL)"
    } else {
        "following scheduler killed (SIGKILL)"
    };
    let o = outcomes.entry(name).or_default();
    o.trial(chaos, &acked);
    o.restarted.extend(restarted(&before, &after));
    // Started again, on the gRPC port scripts/up reserved for it.
    if let Some(i) = args.iter().position(|a| a == "--http-addr") {
        args[i + 1] = format!("127.0.0.1:{}", free_port());
    }
    chaos.start_again(&args, &format!("scheduler-{victim}-again-{tag}.log"));
    let back = chaos.stack.scheduler(victim);
    wait_until("the restarted replica to answer", DEADLINE, || {
        Command::new(binary("petctl"))
            .args(["--server", &back, "get", "nodes"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    });
}

/// Waits until all three nodes are Ready.
fn all_nodes_ready(chaos: &Chaos) {
    wait_until("every node Ready", DEADLINE, || {
        (chaos.petctl.ready_nodes() == 3).then_some(())
    });
}

/// Connects to kubia at `ip` and sends `POST /` with `value`; the open
/// connection, to read the answer from.
fn send_post(ip: &str, value: &str) -> Option<TcpStream> {
    let addr = format!("{ip}:8080").parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {ip}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{value}",
        value.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    Some(stream)
}
