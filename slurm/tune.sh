#!/usr/bin/env bash
# A fair loss comparison on SLURM (docs/tuning.md): an array of tuning workers sharing one study
# folder, then the collector.
#
#   sbatch slurm/tune.sh jobs/tune.toml                           # WORKERS=4 workers
#   WORKERS=8 sbatch --gpus-per-task=1 --time=24:00:00 slurm/tune.sh jobs/tune.toml
#
# Submitted with sbatch, this script first runs as a short planning job: it checks the study
# file, submits itself again as an array of WORKERS tasks with the planning job's shape
# (slurm/common.sh), and the collector behind the array. Each array task is one `tune run`
# worker: it takes trials (and then the final runs) from the study folder until the study has
# ended, one trainer at a time. Before the time limit SLURM signals the task (--signal below);
# the worker passes it to its trainer, which checkpoints, and the task requeues itself; any
# worker goes on with what it left. A `scancel` (SIGTERM) stops a worker the same way but is
# never requeued. Submitting the same study again while it runs adds workers; a different study
# file into the same folder is refused. The collector merges <out>/trials and <out>/final into
# <out>/results and renders <out>/report.
#
# Environment (defaults in brackets): WORKERS [4], TUNE and COLLECTOR [target/release/{tune,
# collector}], TRAINER [target/release/trainer], TUNE_SBATCH_ARGS [more sbatch options for the
# array tasks].
#
#SBATCH --job-name=lossbench-tune
#SBATCH --ntasks=1
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

if [[ -z "${LOSSBENCH_SLURM:-}" && -n "${SLURM_JOB_ID:-}" ]]; then
  LOSSBENCH_SLURM=$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')")
fi
# shellcheck source=slurm/common.sh
source "${LOSSBENCH_SLURM:-$(dirname "${BASH_SOURCE[0]}")}/common.sh"
lb_name=tune
script="$lb_slurm_dir/tune.sh"
TUNE="${TUNE:-$lb_repo/target/release/tune}"
export TUNE

STUDY="${1:-${STUDY:-}}"
[[ -n "$STUDY" ]] || { echo "tune: name the study file: sbatch slurm/tune.sh jobs/tune.toml" >&2; exit 1; }
STUDY=$(cd "$(dirname "$STUDY")" && pwd)/$(basename "$STUDY")
export STUDY
EXIT_REQUEUE=75

plan() {
  [[ -x "$TUNE" ]] || { echo "tune: no tune at $TUNE (build it: make build)" >&2; exit 1; }
  local out
  out=$("$TUNE" out "$STUDY") # checks the study file
  mkdir -p "$out/logs"
  lb_job_shape
  # shellcheck disable=SC2206
  local extra=(${TUNE_SBATCH_ARGS:-})
  local workers="${WORKERS:-4}" array_id
  array_id=$(sbatch --parsable --array="0-$((workers - 1))" "${lb_shape[@]}" "${extra[@]}" \
    --job-name=lossbench-tune-worker --output="$out/logs/%A_%a.out" --export=ALL "$script" "$STUDY")
  array_id=${array_id%%;*}
  lb_log "submitted $workers worker(s) as array job $array_id; logs: $out/logs/${array_id}_<task>.out"
  local collect_id
  collect_id=$(sbatch --parsable --dependency="afterany:$array_id" --ntasks=1 --nodes=1 --time=2:00:00 \
    --job-name=lossbench-tune-collect --output="$out/logs/collect-%j.out" --export=ALL,TUNE_ROLE=collect \
    "$script" "$STUDY")
  lb_log "submitted collector job ${collect_id%%;*}; results: $out/results, report: $out/report"
}

worker() {
  lb_log "worker ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}, restart ${SLURM_RESTART_COUNT:-0}"
  "$TUNE" run "$STUDY" --log-format json &
  local pid=$!
  lb_signal=""
  trap 'lb_signal=USR1; lb_log "time-limit signal: the worker checkpoints its trial"; kill -USR1 "$pid" 2>/dev/null || true' USR1
  trap 'lb_signal=TERM; lb_log "SIGTERM (scancel or preemption): the worker checkpoints its trial"; kill -TERM "$pid" 2>/dev/null || true' TERM
  local rc=0
  while true; do
    wait "$pid" && rc=0 || rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - USR1 TERM
  case "$rc" in
    0) lb_log "the study has no more work for this worker" ;;
    "$EXIT_REQUEUE")
      if [[ "$lb_signal" == USR1 ]]; then
        lb_log "stopped before the time limit: requeueing"
        scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" || lb_log "requeue refused (already requeued?)"
      elif [[ "$lb_signal" == TERM ]]; then
        lb_log "stopped after SIGTERM: not requeued by this script; the other workers go on with its work"
      else
        lb_log "its trainer stopped without a signal (a full disk or quota: the worker's log says which run): requeued and HELD; free space, then: scontrol release ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
        scontrol requeuehold "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" || { lb_log "requeuehold refused"; return "$rc"; }
      fi
      ;;
    *) lb_log "the worker FAILED with exit code $rc"; return "$rc" ;;
  esac
}

collect() {
  local out
  out=$("$TUNE" out "$STUDY")
  lb_log "every worker has ended"
  "$TUNE" show "$STUDY"
  "$COLLECTOR" merge --runs "$out/trials" "$out/final" --out "$out/results"
  "$COLLECTOR" report --results "$out/results" --out "$out/report"
}

if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  worker
elif [[ "${TUNE_ROLE:-}" == collect ]]; then
  collect
else
  plan
fi
