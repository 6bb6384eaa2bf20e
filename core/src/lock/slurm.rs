//! Asking SLURM whether a lock holder's job still runs (`squeue`, then `sacct` for jobs that
//! have left the queue), for holders on other nodes whose lease has expired.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What SLURM says of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Running, or in a state where its processes may still run (completing, suspended, ...).
    MayRun(String),
    /// Pending, finished, failed, cancelled, requeued, or unknown to SLURM: none of its
    /// processes runs.
    Ended(String),
    /// SLURM could not be asked (no `squeue` here, or it failed or timed out).
    Unknown(String),
}

/// Longest wait for `squeue` / `sacct`: a controller that does not answer must not hang a job.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `program args`, returning its exit status success and stdout, or `None` if it cannot be
/// started or does not finish within [`TIMEOUT`].
fn ask(program: &str, args: &[&str]) -> Option<(bool, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Some((
        out.status.success(),
        if text.is_empty() { err } else { text },
    ))
}

/// States in which a job's processes may still run.
fn may_run(state: &str) -> bool {
    let state = state.split_whitespace().next().unwrap_or("");
    matches!(
        state,
        "RUNNING"
            | "COMPLETING"
            | "CONFIGURING"
            | "SUSPENDED"
            | "STOPPED"
            | "SIGNALING"
            | "RESIZING"
            | "STAGE_OUT"
    )
}

/// Whether SLURM job `job` (`<id>` or `<array id>_<task>`) may still run.
pub fn job_state(job: &str) -> JobState {
    match ask("squeue", &["-h", "-t", "all", "-j", job, "-o", "%T"]) {
        Some((true, out)) if !out.is_empty() => {
            let state = out.lines().next().unwrap_or("").to_string();
            if may_run(&state) {
                JobState::MayRun(format!("squeue says {state}"))
            } else {
                JobState::Ended(format!("squeue says {state}"))
            }
        }
        // Left the queue (squeue -j of an old job fails with "Invalid job id"): sacct may know.
        Some((_, out)) => match ask("sacct", &["-n", "-X", "-P", "-j", job, "-o", "State"]) {
            Some((true, acct)) if !acct.is_empty() => {
                let state = acct.lines().last().unwrap_or("").to_string();
                if may_run(&state) {
                    JobState::MayRun(format!("sacct says {state}"))
                } else {
                    JobState::Ended(format!("sacct says {state}"))
                }
            }
            _ if out.contains("Invalid job id") => {
                JobState::Ended(format!("squeue does not know job {job}"))
            }
            _ => JobState::Unknown(format!("squeue: {out}")),
        },
        None => JobState::Unknown("squeue cannot be run here or did not answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_like_states_may_run_and_others_ended() {
        for s in ["RUNNING", "COMPLETING", "SUSPENDED", "STOPPED"] {
            assert!(may_run(s), "{s}");
        }
        for s in [
            "PENDING",
            "COMPLETED",
            "FAILED",
            "CANCELLED by 0",
            "TIMEOUT",
            "REQUEUE_HOLD",
        ] {
            assert!(!may_run(s), "{s}");
        }
    }
}
