#!/usr/bin/env bash
# A loss landscape of one run spread over a SLURM job array (docs/landscape.md): every array task
# computes its share of the grid's blocks (trainer landscape --task K/N) with the MPI ranks srun
# starts (each rank another share); a rerun computes only the blocks still missing. A last job
# merges the tables and renders the report once every task has ended.
#
#   RUN=work/runs/ce-seed0 KIND=2d TASKS=8 sbatch --ntasks=1 --gpus-per-task=1 slurm/landscape.sh
#
# Submitted with sbatch, this script first runs as a short planning job that submits itself as
# an array of TASKS tasks with the planning job's shape (tasks, nodes, CPUs, GPUs, memory, time
# limit, partition: slurm/common.sh, as slurm/sweep.sh does), then the collector behind the array.
#
# Environment (defaults in brackets):
#   RUN [required: the run folder]  KIND [2d: 1d 2d interp sharpness spectrum]  TASKS [4]
#   LANDSCAPE_ARGS [more trainer landscape flags, e.g. "--epoch 80 --points 51 --seed 1"]
#   RESULTS, REPORT [next to the run folders: <runs>/../results, <runs>/../report]
#   TRAINER, COLLECTOR [target/release/{trainer,collector}]  SRUN_MPI [site default]
#   LANDSCAPE_SBATCH_ARGS [more sbatch options for the array tasks]
#
#SBATCH --job-name=lossbench-landscape
#SBATCH --ntasks=1
#SBATCH --time=04:00:00
#SBATCH --open-mode=append
set -euo pipefail

# slurm/common.sh, beside the submitted script (a job runs a spooled copy of it).
if [[ -z "${LOSSBENCH_SLURM:-}" && -n "${SLURM_JOB_ID:-}" ]]; then
  LOSSBENCH_SLURM=$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')")
fi
# shellcheck source=slurm/common.sh
source "${LOSSBENCH_SLURM:-$(dirname "${BASH_SOURCE[0]}")}/common.sh"
lb_name=landscape
script="$lb_slurm_dir/landscape.sh"

RUN="${RUN:?set RUN to the run folder}"
KIND="${KIND:-2d}"
TASKS="${TASKS:-4}"
RUNS_DIR=$(dirname "$RUN")
RESULTS="${RESULTS:-$(dirname "$RUNS_DIR")/results}"
REPORT="${REPORT:-$(dirname "$RUNS_DIR")/report}"
LOGS="${LOGS:-$RUN/landscape/logs}"
export RUN KIND TASKS RESULTS REPORT LOGS

plan() {
  [[ -x "$TRAINER" ]] || { echo "landscape: no trainer at $TRAINER (build it: make build)" >&2; exit 1; }
  [[ -f "$RUN/config.toml" ]] || { echo "landscape: $RUN is not a run folder (no config.toml)" >&2; exit 1; }
  [[ "$TASKS" =~ ^[1-9][0-9]*$ ]] || { echo "landscape: TASKS=$TASKS is not a positive number" >&2; exit 1; }
  mkdir -p "$LOGS"
  lb_job_shape
  # shellcheck disable=SC2206
  local extra=(${LANDSCAPE_SBATCH_ARGS:-})
  local array_id
  array_id=$(sbatch --parsable --array="0-$((TASKS - 1))" "${lb_shape[@]}" "${extra[@]}" --job-name=lossbench-landscape \
    --output="$LOGS/%A_%a.out" --export=ALL "$script")
  array_id=${array_id%%;*}
  lb_log "submitted array job $array_id: $KIND landscape of $RUN in $TASKS task(s); logs: $LOGS/${array_id}_<task>.out"
  local collect_id
  collect_id=$(sbatch --parsable --dependency="afterany:$array_id" --ntasks=1 --nodes=1 --time=1:00:00 \
    --job-name=lossbench-collect --output="$LOGS/collect-%j.out" --export=ALL,LANDSCAPE_ROLE=collect "$script")
  lb_log "submitted collector job ${collect_id%%;*}; results: $RESULTS, report: $REPORT"
}

task() {
  local k=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
  local n=${SLURM_ARRAY_TASK_COUNT:-$TASKS}
  lb_log "task $k of $n: $KIND landscape of $RUN on ${SLURM_NTASKS:-1} rank(s)"
  # shellcheck disable=SC2206
  local args=(${LANDSCAPE_ARGS:-})
  srun ${SRUN_MPI:+--mpi=$SRUN_MPI} --kill-on-bad-exit=1 "$TRAINER" landscape --run "$RUN" --kind "$KIND" \
    --task "$k/$n" --log-format json "${args[@]}"
}

collect() {
  lb_log "every landscape task has ended"
  "$COLLECTOR" merge --runs "$RUNS_DIR" --out "$RESULTS"
  "$COLLECTOR" report --results "$RESULTS" --out "$REPORT"
}

if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  task
elif [[ "${LANDSCAPE_ROLE:-}" == collect ]]; then
  collect
else
  plan
fi
