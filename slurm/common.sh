# The part slurm/sweep.sh and slurm/landscape.sh share (sourced by both, so they cannot drift):
# the repository, the job shape their array tasks inherit, the binaries, logging, and whether a
# run folder is held by a running trainer. Not a job script itself.
#
# A job runs a spooled copy of its script, so the scripts find this file through the path SLURM
# recorded for them (or LOSSBENCH_SLURM, which they export to the jobs they submit); this file
# is read where it lies, so its own path is the repository's.

lb_slurm_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lb_repo=$(dirname "$lb_slurm_dir")
export LOSSBENCH_SLURM="$lb_slurm_dir"
TRAINER="${TRAINER:-$lb_repo/target/release/trainer}"
COLLECTOR="${COLLECTOR:-$lb_repo/target/release/collector}"
export TRAINER COLLECTOR

# Relative paths (DATA, OUT, RUN, ...) are the submitter's: work from the submission folder.
cd "${SLURM_SUBMIT_DIR:-$PWD}"

lb_log() { echo "[$lb_name $(date +%H:%M:%S)] $*"; }

# The planning job's shape, for the array tasks it submits (unless SWEEP_SBATCH_ARGS or
# LANDSCAPE_SBATCH_ARGS say otherwise): tasks, nodes, CPUs, GPUs, memory, partition, account,
# QOS, constraint and time limit. Sets the array lb_shape.
lb_job_shape() {
  lb_shape=()
  local pair var flag
  for pair in SLURM_NTASKS:--ntasks SLURM_JOB_NUM_NODES:--nodes \
    SLURM_NTASKS_PER_NODE:--ntasks-per-node SLURM_CPUS_PER_TASK:--cpus-per-task \
    SLURM_GPUS:--gpus SLURM_GPUS_PER_TASK:--gpus-per-task SLURM_GPUS_PER_NODE:--gpus-per-node \
    SLURM_MEM_PER_NODE:--mem SLURM_MEM_PER_CPU:--mem-per-cpu SLURM_MEM_PER_GPU:--mem-per-gpu \
    SLURM_JOB_PARTITION:--partition SLURM_JOB_ACCOUNT:--account SLURM_JOB_QOS:--qos; do
    var=${pair%%:*}
    flag=${pair#*:}
    [[ -n "${!var:-}" ]] && lb_shape+=("$flag=${!var}")
  done
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    local limit features
    limit=$(squeue -h -j "$SLURM_JOB_ID" -o %l 2>/dev/null || true)
    [[ -n "$limit" && "$limit" != UNLIMITED && "$limit" != INVALID ]] && lb_shape+=("--time=$limit")
    features=$(squeue -h -j "$SLURM_JOB_ID" -o %f 2>/dev/null || true)
    [[ -n "$features" && "$features" != "(null)" ]] && lb_shape+=("--constraint=$features")
  fi
  return 0
}

# Prints who holds a run folder's lock (a trainer training it) and succeeds, or fails when no
# one holds it (docs/cluster.md, "Runs held by running jobs").
lb_run_held() {
  local lock="$1/.lock"
  [[ -f "$lock" ]] || return 1
  flock -n "$lock" true 2>/dev/null && return 1
  if flock -n -s "$lock" true 2>/dev/null; then
    echo "landscapes or explanations reading it"
    return 0
  fi
  local holder
  holder=$(tr -d '{}"' < "$lock" | sed 's/,/, /g')
  echo "${holder:-a process that did not say who it is}"
}
