#!/usr/bin/env bash
# The loss study as one SLURM job array: every (job, architecture, seed) is one array task that
# trains with its MPI ranks launched by srun; a last job merges the results once every task has
# ended.
#
#   sbatch slurm/sweep.sh                                  # 7 losses x seeds 0 1 2, K-Branch CNN
#   LOSSES="ce focal" SEEDS="3 4" EPOCHS=10 sbatch slurm/sweep.sh
#   LOSSES="asl zlpr" ARCHS="kbranch resnet50" sbatch slurm/sweep.sh
#   sbatch --ntasks=4 --gpus-per-task=1 --time=24:00:00 slurm/sweep.sh
#
# Submitted with sbatch, this script first runs as a short planning job: it lists the runs still
# to train (finished ones, and ones a running job is training, are skipped and named; unfinished
# ones resume from their last checkpoint), submits itself again as a job array with the planning
# job's shape (slurm/common.sh), and submits the collector behind the array. Each array task is
# one run; a task whose run another job is training by then (a second sweep submitted while
# the first runs) leaves it to that job. Before the time limit SLURM signals the task (--signal
# below); the trainer checkpoints and exits 75, and the task requeues itself and resumes. A
# `scancel` (SIGTERM) checkpoints too but is never requeued; a trainer stopped by a full disk
# or quota is requeued held, to be released once space is free; any other failure fails the
# task, visibly.
# docs/cluster.md has the details.
#
# Environment (defaults in brackets):
#   LOSSES [ce wce focal hamming huber sparsemax ranking: job configs JOBS/<name>.toml]
#   SEEDS [0 1 2]  ARCHS [kbranch; also resnet50 vgg16]
#   DATA [work/store.zarr]  OUT [work/runs]  RESULTS [<OUT>/../results]  REPORT [<OUT>/../report]
#   EPOCHS [from the job config]  JOBS [jobs]  TRAIN_ARGS [extra trainer flags, e.g. --set ...]
#   TRAINER, COLLECTOR [target/release/{trainer,collector}]  SRUN_MPI [site default; pmix for
#   Debian's OpenMPI]  MAX_PARALLEL [no limit: tasks running at once]  SWEEP_SBATCH_ARGS [more
#   sbatch options for the array tasks]
#
#SBATCH --job-name=lossbench
#SBATCH --ntasks=1
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

# slurm/common.sh, beside the submitted script (a job runs a spooled copy of it).
if [[ -z "${LOSSBENCH_SLURM:-}" && -n "${SLURM_JOB_ID:-}" ]]; then
  LOSSBENCH_SLURM=$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')")
fi
# shellcheck source=slurm/common.sh
source "${LOSSBENCH_SLURM:-$(dirname "${BASH_SOURCE[0]}")}/common.sh"
lb_name=sweep
script="$lb_slurm_dir/sweep.sh"

LOSSES="${LOSSES:-ce wce focal hamming huber sparsemax ranking}"
SEEDS="${SEEDS:-0 1 2}"
ARCHS="${ARCHS:-kbranch}"
DATA="${DATA:-work/store.zarr}"
OUT="${OUT:-work/runs}"
RESULTS="${RESULTS:-$(dirname "$OUT")/results}"
REPORT="${REPORT:-$(dirname "$OUT")/report}"
JOBS="${JOBS:-$lb_repo/jobs}"
LOGS="${LOGS:-$OUT/logs}"
export LOSSES SEEDS ARCHS DATA OUT RESULTS REPORT JOBS LOGS

# Exit codes of the trainer (docs/training.md, "Exit codes").
EXIT_BUSY=73
EXIT_REQUEUE=75
EXIT_IN_USE=76

run_finished() { [[ -f "$OUT/$1/test_metrics.json" ]]; }

# The trainer's run id: the job, the architecture unless it is the default K-Branch CNN, the seed.
run_id_of() { if [[ "$2" == kbranch ]]; then echo "$1-seed$3"; else echo "$1-$2-seed$3"; fi; }

plan() {
  [[ -x "$TRAINER" ]] || { echo "sweep: no trainer at $TRAINER (build it: make build)" >&2; exit 1; }
  [[ -x "$COLLECTOR" ]] || { echo "sweep: no collector at $COLLECTOR (build it: make build)" >&2; exit 1; }
  [[ -d "$DATA" ]] || { echo "sweep: no store at $DATA (set DATA)" >&2; exit 1; }
  for loss in $LOSSES; do
    [[ -f "$JOBS/$loss.toml" ]] || { echo "sweep: no job config $JOBS/$loss.toml (LOSSES=\"$LOSSES\")" >&2; exit 1; }
  done
  mkdir -p "$OUT/.sweep" "$LOGS"
  local plan_file="$OUT/.sweep/plan-${SLURM_JOB_ID:-$$}.txt" n=0 finished=0 held=0 in_use=0 id holder rc
  : > "$plan_file"
  for arch in $ARCHS; do
    case "$arch" in kbranch | resnet50 | vgg16) ;; *) echo "sweep: unknown architecture $arch (ARCHS=\"$ARCHS\")" >&2; exit 1 ;; esac
    for loss in $LOSSES; do
      for seed in $SEEDS; do
        id=$(run_id_of "$loss" "$arch" "$seed")
        rc=0
        if run_finished "$id"; then
          finished=$((finished + 1))
          lb_log "skipping $id: finished"
          continue
        fi
        holder=$(lb_run_held "$OUT/$id") || rc=$?
        if ((rc == 0)); then
          held=$((held + 1))
          lb_log "skipping $id: held by $holder"
        elif ((rc == 3)); then
          in_use=$((in_use + 1))
          lb_log "NOT planned: $id is in use by landscapes or explanations ($holder); submit the sweep again once they end"
        else
          echo "$loss $arch $seed" >> "$plan_file"
          n=$((n + 1))
        fi
      done
    done
  done
  lb_log "$n run(s) to train or resume, $finished finished, $held being trained by running jobs, $in_use in use by landscapes or explanations (not planned); plan in $plan_file"

  lb_job_shape
  # shellcheck disable=SC2206
  local extra=(${SWEEP_SBATCH_ARGS:-})
  local dependency=()
  if ((n > 0)); then
    local array_id
    array_id=$(sbatch --parsable --array="0-$((n - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}" "${lb_shape[@]}" "${extra[@]}" \
      --job-name=lossbench-train --output="$LOGS/%A_%a.out" --export=ALL,SWEEP_PLAN="$plan_file" "$script")
    array_id=${array_id%%;*}
    # Which array runs this plan: `collector status` maps line i to task <array>_<i>.
    echo "$array_id" > "${plan_file%.txt}.array"
    lb_log "submitted array job $array_id (tasks 0-$((n - 1))); logs: $LOGS/${array_id}_<task>.out"
    dependency=(--dependency="afterany:$array_id")
  fi
  local collect_id
  collect_id=$(sbatch --parsable "${dependency[@]}" --ntasks=1 --nodes=1 --time=2:00:00 --job-name=lossbench-collect \
    --output="$LOGS/collect-%j.out" --export=ALL,SWEEP_ROLE=collect "$script")
  lb_log "submitted collector job ${collect_id%%;*}; results: $RESULTS, report: $REPORT"
}

train_task() {
  local line loss arch seed
  line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$SWEEP_PLAN")
  read -r loss arch seed <<< "$line"
  [[ -n "$loss" && -n "$arch" && -n "$seed" ]] || { echo "sweep: task $SLURM_ARRAY_TASK_ID has no line in $SWEEP_PLAN" >&2; exit 1; }
  local run_id
  run_id=$(run_id_of "$loss" "$arch" "$seed")
  if run_finished "$run_id"; then
    lb_log "$run_id already finished"
    return 0
  fi
  local epochs=()
  [[ -n "${EPOCHS:-}" ]] && epochs=(--epochs "$EPOCHS")
  lb_log "task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}: $run_id on $SLURM_NTASKS rank(s), restart ${SLURM_RESTART_COUNT:-0}"
  # shellcheck disable=SC2206
  local train_args=(${TRAIN_ARGS:-})
  srun ${SRUN_MPI:+--mpi=$SRUN_MPI} --kill-on-bad-exit=1 "$TRAINER" train --config "$JOBS/$loss.toml" \
    --seed "$seed" --data "$DATA" --out "$OUT" --run-id "$run_id" "${epochs[@]}" --resume auto \
    --set "model.arch=\"$arch\"" --log-format json "${train_args[@]}" &
  local step=$!
  # The time-limit warning (--signal=B:USR1@300 above, or `scancel --signal=USR1`) and a
  # cancellation or preemption (SIGTERM) reach this script: pass them to the ranks, which finish
  # their step, checkpoint and exit 75. Which one came decides what follows (below).
  lb_signal=""
  trap 'lb_signal=USR1; lb_log "time-limit signal: asking the trainer to checkpoint"; kill -USR1 "$step" 2>/dev/null || true' USR1
  trap 'lb_signal=TERM; lb_log "SIGTERM (scancel or preemption): asking the trainer to checkpoint"; kill -TERM "$step" 2>/dev/null || true' TERM
  local rc=0
  while true; do
    wait "$step" && rc=0 || rc=$?
    kill -0 "$step" 2>/dev/null || break # wait returned for a trapped signal: keep waiting
  done
  trap - USR1 TERM
  local task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  case "$rc" in
    0) lb_log "$run_id finished" ;;
    "$EXIT_REQUEUE")
      case "$lb_signal" in
        USR1)
          lb_log "$run_id checkpointed before the time limit: requeueing"
          scontrol requeue "$task" || lb_log "requeue refused (already requeued?)"
          ;;
        TERM)
          # A user's scancel must not bring the task back; a preemption with
          # PreemptMode=REQUEUE is requeued by SLURM itself.
          lb_log "$run_id checkpointed after SIGTERM (scancel or preemption): not requeued by this script; resume it with sbatch slurm/sweep.sh"
          ;;
        *)
          # Stopped by itself: out of disk space or quota, the newest checkpoint intact.
          local why
          why=$(sed -n 's/.*"reason": *"\(.*\)".*/\1/p' "$OUT/$run_id/run.json" 2>/dev/null | tail -n 1 || true)
          lb_log "$run_id stopped without a signal (${why:-see its log}): requeued and HELD; free space, then: scontrol release $task"
          scontrol requeuehold "$task" || { lb_log "requeuehold refused"; return "$rc"; }
          ;;
      esac
      ;;
    "$EXIT_BUSY") lb_log "$run_id is being trained by another job: left to it" ;;
    "$EXIT_IN_USE")
      lb_log "$run_id FAILED: in use by landscapes or explanations (exit $rc); train it again once they end"
      return "$rc"
      ;;
    *) lb_log "$run_id FAILED with exit code $rc (docs/training.md, \"Exit codes\"); its run.json says why"; return "$rc" ;;
  esac
}

collect() {
  lb_log "every training task has ended"
  if [[ -x "$COLLECTOR" ]]; then
    "$COLLECTOR" merge --runs "$OUT" --out "$RESULTS"
    "$COLLECTOR" report --results "$RESULTS" --out "$REPORT"
  else
    lb_log "no collector at $COLLECTOR; finished runs:"
    for dir in "$OUT"/*/; do
      run_finished "$(basename "$dir")" && echo "  $(basename "$dir")"
    done
  fi
}

if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  train_task
elif [[ "${SWEEP_ROLE:-}" == collect ]]; then
  collect
else
  plan
fi
