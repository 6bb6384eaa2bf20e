//! Who a process is, in terms another process can check: the host and its boot, the PID
//! namespace and the pid with its start time (a pid alone is reused, and means nothing on
//! another node or in another namespace), and its SLURM job, step and restart count.

use serde::{Deserialize, Serialize};

use crate::host::{boot_id, host_name, pid_namespace, slurm_job, start_ticks};

/// A process as recorded in a lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub host: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
    /// `SLURM_ARRAY_JOB_ID_SLURM_ARRAY_TASK_ID`, else `SLURM_JOB_ID`, when under SLURM.
    pub slurm_job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_step: Option<String>,
    /// `SLURM_RESTART_COUNT`: a requeued job keeps its id and counts up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_restart: Option<u64>,
}

impl Process {
    pub fn me() -> Process {
        let pid = std::process::id();
        Process {
            host: host_name(),
            pid,
            boot_id: boot_id(),
            pid_namespace: pid_namespace(),
            start_ticks: start_ticks(pid),
            slurm_job: slurm_job(),
            slurm_step: std::env::var("SLURM_STEP_ID").ok(),
            slurm_restart: std::env::var("SLURM_RESTART_COUNT")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    /// Whether this process can see `other`'s pid: same host, same boot, same PID namespace.
    /// Only then may it judge whether `other` runs by its pid.
    pub fn shares_pids_with(&self, other: &Process) -> bool {
        self.host == other.host
            && self.boot_id.is_some()
            && self.boot_id == other.boot_id
            && self.pid_namespace.is_some()
            && self.pid_namespace == other.pid_namespace
    }

    /// Whether `self` (seen from a process that shares its pids) still runs: its pid is there
    /// with the same start time.
    pub fn runs_here(&self) -> bool {
        match (start_ticks(self.pid), self.start_ticks) {
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Whether `self` is an earlier incarnation of the SLURM job `me` runs in (the same job id,
    /// requeued since): then it no longer runs, whatever SLURM says of the job.
    pub fn is_earlier_incarnation_of(&self, me: &Process) -> bool {
        self.slurm_job.is_some()
            && self.slurm_job == me.slurm_job
            && self.slurm_restart.unwrap_or(0) < me.slurm_restart.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_a_reused_pid_does_not_count() {
        let me = Process::me();
        assert!(me.shares_pids_with(&me));
        assert!(me.runs_here());
        let reused = Process {
            start_ticks: me.start_ticks.map(|t| t + 1),
            ..me.clone()
        };
        assert!(!reused.runs_here());
        // A pid above the kernel's maximum never runs.
        let gone = Process {
            pid: 4_294_967,
            ..me.clone()
        };
        assert!(!gone.runs_here());
        let elsewhere = Process {
            host: "node2".into(),
            ..me.clone()
        };
        assert!(!me.shares_pids_with(&elsewhere));
    }

    #[test]
    fn a_requeued_job_outlives_its_earlier_incarnation() {
        let at = |job: &str, restart| Process {
            slurm_job: Some(job.into()),
            slurm_restart: Some(restart),
            ..Process::me()
        };
        assert!(at("812_3", 0).is_earlier_incarnation_of(&at("812_3", 1)));
        assert!(!at("812_3", 1).is_earlier_incarnation_of(&at("812_3", 1)));
        assert!(!at("812_4", 0).is_earlier_incarnation_of(&at("812_3", 1)));
    }
}
