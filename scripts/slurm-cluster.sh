#!/usr/bin/env bash
# A private single-node SLURM cluster (munge + slurmctld + slurmd) for the sweep test and for
# trying slurm/sweep.sh on one machine. Needs root and Debian's munge, slurmctld, slurmd and
# slurm-client (scripts/setup-system.sh installs them).
#
#   scripts/slurm-cluster.sh start DIR   # writes DIR/slurm.conf, starts the daemons
#   export SLURM_CONF=DIR/slurm.conf     # for sbatch, squeue, scontrol ...
#   scripts/slurm-cluster.sh stop DIR
#
# Its own munge socket and ports keep it apart from any other SLURM on the machine;
# cred_expire=10 lets a requeued job start again after ~11 s instead of ~2 minutes.
set -euo pipefail
action=${1:?usage: slurm-cluster.sh start|stop DIR}
dir=$(mkdir -p "${2:?usage: slurm-cluster.sh start|stop DIR}" && cd "$2" && pwd)

stop() {
  for pidfile in slurmd.pid slurmctld.pid munged.pid; do
    if [[ -f "$dir/$pidfile" ]]; then
      kill "$(cat "$dir/$pidfile")" 2>/dev/null || true
      rm -f "$dir/$pidfile"
    fi
  done
}

case "$action" in
  stop) stop; exit 0 ;;
  start) ;;
  *) echo "usage: slurm-cluster.sh start|stop DIR" >&2; exit 2 ;;
esac

stop
host=$(hostname -s)
# At least 4 CPUs, so that a planning job or a collector can start beside a 2-rank task on a
# 2-core machine (slurmd takes the configured count, config_overrides).
cpus=$(nproc)
((cpus >= 4)) || cpus=4
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))
mkdir -p "$dir"/{spool,state,log,munge}
rm -rf "${dir:?}"/state/* "${dir:?}"/spool/*
chown munge:munge "$dir/munge"
[[ -f "$dir/munge/munge.key" ]] || mungekey --create --keyfile "$dir/munge/munge.key" >/dev/null
chown munge:munge "$dir/munge/munge.key"
chmod 400 "$dir/munge/munge.key"
mkdir -p /run/munge && chown munge:munge /run/munge
socket="$dir/munge/munge.socket"
runuser -u munge -- munged --key-file "$dir/munge/munge.key" --socket "$socket" \
  --pid-file "$dir/munge/munged.pid" --log-file "$dir/munge/munged.log" --seed-file "$dir/munge/munge.seed" --force
cp "$dir/munge/munged.pid" "$dir/munged.pid"
# Ports derived from the folder, so that two clusters in two folders do not collide.
port=$((20000 + $(echo "$dir" | cksum | cut -d' ' -f1) % 20000))
cat > "$dir/slurm.conf" <<CONF
ClusterName=lossbench-ci
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmdSpoolDir=$dir/spool
StateSaveLocation=$dir/state
SlurmUser=root
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
MinJobAge=600
KillWait=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld
slurmd
for _ in $(seq 100); do
  if sinfo -h -o %t 2>/dev/null | grep -q idle; then
    echo "slurm-cluster: up (SLURM_CONF=$SLURM_CONF)"
    exit 0
  fi
  sleep 0.2
done
echo "slurm-cluster: the node did not become idle; logs in $dir/log" >&2
sinfo >&2 || true
exit 1
