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

# Whether a run folder is held (docs/cluster.md, "Runs held by running jobs"), as
# `collector holder` judges its lease lock (it holds without flock, across nodes): prints the
# holder and returns 0 when a live trainer writes it, 3 when only landscapes or explanations
# use it, 1 when it is free, 2 when it cannot be told (the message on stderr).
lb_run_held() {
  local out rc=0
  out=$("$COLLECTOR" holder "$1" 2>&1) || rc=$?
  case "$rc" in
    0 | 3) echo "$out" ;;
    1) ;;
    *) echo "cannot tell whether $1 is held: $out" >&2 ;;
  esac
  return "$rc"
}
