//! This host and its processes: its name and boot, the PID namespace, whether a pid runs (and
//! since when), and the SLURM job this process runs in. Only a process on the same host, boot
//! and PID namespace may judge another by its pid (docs/reliability.md).

use std::fs;

/// The machine's host name.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// This process's SLURM job (`<array job>_<task>` for an array task), if any.
pub fn slurm_job() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(job), Some(task)) => Some(format!("{job}_{task}")),
        _ => var("SLURM_JOB_ID"),
    }
}

/// The kernel's boot id: two processes with the same host name but another boot id are on
/// another machine, or the machine was rebooted since.
pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// The PID namespace (`pid:[4026531836]`): pids of another namespace are other processes.
pub fn pid_namespace() -> Option<String> {
    fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.display().to_string())
}

/// A running process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22),
/// which tells a live process from a later one that reuses its pid; `None` when no process
/// has the pid, or only a dead one its parent has not reaped yet (a zombie).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields count after its ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether a process of this pid runs here (a zombie does not).
pub fn process_runs(pid: u32) -> bool {
    start_ticks(pid).is_some()
}
