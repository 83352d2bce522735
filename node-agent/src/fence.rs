//! The fence each container runs under: `petset-shim` holds a deadline and
//! kills the container's whole process group when it passes unless the
//! agent moved it, so that a hung or frozen agent cannot keep a pod running
//! past the moment its node's lease may have expired.
//!
//! # Protocol
//! The agent starts `petset-shim DEADLINE -- PROGRAM ARGS...` as a process
//! group leader, with a pipe on the shim's standard input. DEADLINE, and
//! each line the agent writes afterwards, is an absolute `CLOCK_BOOTTIME`
//! instant in nanoseconds (a clock that counts suspend, so a suspended
//! machine wakes past its deadlines rather than before them). The agent
//! writes a new deadline after each renewal of the node's lease that etcd
//! confirmed: the renewal's send instant plus two thirds of the TTL.
//!
//! # Guarantees of the shim
//! - Deadlines only move forward; an older one written late changes nothing.
//! - At the deadline, or when the pipe closes (the agent died or dropped
//!   it), the shim writes why to the container's log and sends SIGKILL to
//!   its process group: the container, everything it started, and the shim.
//! - It starts nothing past the deadline: given one already passed, it
//!   kills nothing and exits 137 at once.
//! - SIGTERM and SIGINT sent to the group reach the container; the shim
//!   stays to report how it ended. It exits with the container's code, or
//!   128 + the signal that ended it.
//! - It dies with the agent (a parent-death signal), as the container did
//!   before the shim.
//!
//! # The Docker runtime: one shim for the node
//! A Docker container's processes are the engine's children, not the
//! agent's, so no shim can sit between them. When the agent runs in a
//! container whose pid namespace every pod joins (the compose stack), it
//! starts one `petset-shim --namespace DEADLINE` beside itself, fed the
//! same deadlines. Past the deadline, and for as long as it stays past,
//! that shim kills every process of the namespace but its init, the agent
//! and itself: every pod of the node, each container ending with its
//! process. When the agent's pipe closes it kills them once more and
//! exits. It refuses to run in the host's pid namespace, where that would
//! be every process of the machine.

/// Whether this process is in the host's (the initial) pid namespace,
/// whose `/proc/self/ns/pid` inode is the kernel's fixed
/// `PROC_PID_INIT_INO`. Unknown counts as yes.
pub fn in_initial_pid_namespace() -> bool {
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    rustix::fs::stat("/proc/self/ns/pid").map_or(true, |s| s.st_ino == PROC_PID_INIT_INO)
}

/// Now on `CLOCK_BOOTTIME`, in nanoseconds.
pub fn boottime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// The deadline line for `ns`.
pub fn line(ns: u64) -> String {
    format!("{ns}\n")
}

/// The shim program: beside the agent's executable (or one folder up, for
/// test binaries under `deps/`), else on `PATH`.
pub fn shim_program() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("PETSET_SHIM") {
        return Some(path.into());
    }
    let exe = std::env::current_exe().ok()?;
    let beside = exe.parent()?;
    for dir in [Some(beside), beside.parent()].into_iter().flatten() {
        let candidate = dir.join("petset-shim");
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("petset-shim"))
            .find(|p| p.is_file())
    })
}
