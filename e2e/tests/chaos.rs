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
use std::process::Command;
use std::time::{Duration, Instant};

use petset_e2e::chaos::{
    Chaos, DEADLINE, Outcome, PODS, agent_pid, cmdline, node_of, report, restarted, run_kill,
    trials,
};
use petset_e2e::local::{Resume, Sampler, processes};
use petset_e2e::{binary, free_port, wait_until};

const LEASE_TTL: u64 = 3;

#[test]
fn no_identity_runs_twice_and_no_acknowledged_write_is_lost_under_faults() {
    let trials = trials();
    let mut chaos = Chaos::start("127.78", LEASE_TTL, &[]);
    let nodes = chaos.petctl.ready_nodes();
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
        let before = chaos.pod_processes();
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
        let after = chaos.pod_processes();
        let o = outcomes
            .entry("leading scheduler killed (SIGKILL)")
            .or_default();
        o.trial(&chaos, &acked);
        o.restarted.extend(restarted(&before, &after));
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

    report(
        &format!("chaos: {trials} trials of each fault, node lease TTL {LEASE_TTL} s"),
        trials,
        &outcomes,
        &seen,
    );
}
