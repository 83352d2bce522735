//! petset-shim: runs one container under a deadline (see
//! `node_agent::fence` for the protocol and its guarantees).

use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::time::Duration;

use node_agent::fence::boottime_ns;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::signal::unix::{SignalKind, signal};

/// How often the deadline is compared with `CLOCK_BOOTTIME` at the most:
/// tokio's timers run on the monotonic clock, which stops while the machine
/// is suspended.
const RECHECK: Duration = Duration::from_millis(250);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, deadline] = args.as_slice()
        && mode == "--namespace"
    {
        let Ok(deadline) = deadline.parse::<u64>() else {
            usage()
        };
        namespace_fence(deadline);
    }
    let (deadline, argv) = match args.as_slice() {
        [deadline, dashes, argv @ ..] if dashes == "--" && !argv.is_empty() => {
            match deadline.parse::<u64>() {
                Ok(d) => (d, argv.to_vec()),
                Err(_) => usage(),
            }
        }
        _ => usage(),
    };
    // Die with the agent, as the container did before the shim. If the
    // agent is gone already, do not start.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        eprintln!("petset-shim: the agent is gone; not starting the container");
        std::process::exit(137);
    }
    if boottime_ns() >= deadline {
        eprintln!("petset-shim: the lease deadline has passed; not starting the container");
        std::process::exit(137);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let code = runtime.block_on(run(deadline, argv));
    std::process::exit(code);
}

fn usage() -> ! {
    eprintln!(
        "usage: petset-shim DEADLINE_BOOTTIME_NS -- PROGRAM [ARGS...]\n       \
         petset-shim --namespace DEADLINE_BOOTTIME_NS"
    );
    std::process::exit(2);
}

/// `--namespace`: the fence of a whole pid namespace (the Docker runtime's
/// agent container, which every pod joins). Past the deadline, and for as
/// long as it stays past, every process of the namespace but its init, the
/// agent (the shim's parent) and the shim is killed; when the agent's pipe
/// closes, once more, then the shim exits. See `node_agent::fence`.
fn namespace_fence(mut deadline: u64) -> ! {
    // kill_namespace signals every process /proc lists, which in the host's
    // pid namespace is every process of the machine.
    if node_agent::fence::in_initial_pid_namespace() {
        eprintln!(
            "petset-shim: --namespace refused in the host's pid namespace (it would kill every process)"
        );
        std::process::exit(2);
    }
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    let agent = rustix::process::getppid();
    let (lines_tx, lines) = std::sync::mpsc::channel::<Option<u64>>();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Ok(next) = line.trim().parse::<u64>() {
                let _ = lines_tx.send(Some(next));
            }
        }
        let _ = lines_tx.send(None);
    });
    let mut fenced = false;
    loop {
        let left = Duration::from_nanos(deadline.saturating_sub(boottime_ns()));
        if left.is_zero() {
            if !fenced {
                eprintln!(
                    "petset-shim: the node's lease renewal was not confirmed before the deadline: \
                     killing every pod of the node"
                );
                fenced = true;
            }
            kill_namespace(agent);
        } else if fenced {
            eprintln!("petset-shim: a new deadline: pods may run again");
            fenced = false;
        }
        match lines.recv_timeout(if left.is_zero() {
            RECHECK
        } else {
            left.min(RECHECK)
        }) {
            Ok(Some(next)) => deadline = deadline.max(next),
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                eprintln!(
                    "petset-shim: the agent closed its pipe (it stopped or died): killing every pod of the node"
                );
                kill_namespace(agent);
                std::process::exit(137);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// SIGKILL to every process of this pid namespace but its init, `agent`
/// and the shim.
fn kill_namespace(agent: Option<Pid>) {
    let me = rustix::process::getpid();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        if pid.as_raw_nonzero().get() == 1 || pid == me || Some(pid) == agent {
            continue;
        }
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

async fn run(mut deadline: u64, argv: Vec<String>) -> i32 {
    // Handlers (not SIG_IGN, which the container would inherit): a signal
    // the agent sends the group reaches the container; the shim stays.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("petset-shim: cannot handle signals");
        return 2;
    };
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]).stdin(Stdio::null());
    // The container stays in the shim's process group (the agent made the
    // shim its leader), so the group's SIGKILL ends both.
    let mut child = match tokio::process::Command::from(command).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("petset-shim: cannot start {:?}: {e}", argv[0]);
            return 127;
        }
    };
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    let mut control = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let left = Duration::from_nanos(deadline.saturating_sub(boottime_ns()));
        if left.is_zero() {
            fence(
                pid,
                "the node's lease renewal was not confirmed before the deadline",
            );
        }
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                    Err(_) => 1,
                };
            }
            line = control.next_line() => match line {
                Ok(Some(line)) => {
                    if let Ok(next) = line.trim().parse::<u64>() {
                        deadline = deadline.max(next);
                    }
                }
                Ok(None) | Err(_) => fence(pid, "the agent closed its pipe (it stopped or died)"),
            },
            _ = tokio::time::sleep(left.min(RECHECK)) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// Kills the container's process group, the shim with it.
fn fence(child: Option<Pid>, why: &str) -> ! {
    eprintln!("petset-shim: killing the container: {why}");
    let group = rustix::process::getpgrp();
    if group == rustix::process::getpid() {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    } else if let Some(child) = child {
        // Not a group leader (started by hand): the container at least.
        let _ = rustix::process::kill_process(child, Signal::KILL);
    }
    std::process::exit(137)
}
