#!/usr/bin/env bash
# A private single-node SLURM cluster for the `slurm` tests: munge, slurmctld and slurmd, all configured,
# keyed and logged under DIR (default: a new folder in /tmp), on free ports. Needs root (slurmd runs each job
# as its submitter); installs Debian's slurmctld, slurmd, slurm-client and munge when they are missing.
# Nothing outside DIR changes but the packages; scripts/slurm-down.sh DIR stops exactly what this started.
#   usage: scripts/slurm-up.sh [DIR]    then: export SLURM_CONF=DIR/slurm.conf (sbatch, squeue, nitro -m ...)
set -Eeuo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
fail() { echo "error: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || fail "starting a SLURM cluster needs root (slurmd runs jobs as their users)"
dir="${1:-$(mktemp -d /tmp/nitro-slurm.XXXXXX)}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
[ ! -e "$dir/pids" ] || fail "$dir already holds a cluster; stop it first: $here/slurm-down.sh $dir"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  echo "installing slurmctld slurmd slurm-client munge (apt-get)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge; } >"$dir/apt.log" 2>&1 \
    || fail "could not install the SLURM packages with apt-get (see $dir/apt.log): $(tail -n 1 "$dir/apt.log")"
fi

# From here on a failure stops whatever was already started and removes DIR.
trap '"$here/slurm-down.sh" "$dir" >&2; exit 2' ERR
mkdir -p "$dir"/{state,spool,log,munge}
chmod 700 "$dir/munge"
: >"$dir/pids"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
host="$(hostname -s)"
node="$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')"  # CPUs, sockets, cores, threads, RealMemory
cat >"$dir/slurm.conf" <<EOF
# Written by scripts/slurm-up.sh for nitro-cli's tests: one node, one partition, everything under $dir.
ClusterName=nitro-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No accounting storage (as on many small clusters): sacct has nothing to say, submitit reads result files.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# A cancelled job's processes get SIGTERM, then SIGKILL this many seconds later.
KillWait=10
SchedulerType=sched/builtin
NodeName=$host NodeAddr=127.0.0.1 $node State=UNKNOWN
PartitionName=nitro Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

mungekey --create --keyfile="$dir/munge/munge.key"
# Each daemon in the foreground, detached from our terminal and pipes; its PID is recorded before it is used.
start() {
  local name="$1"; shift
  setsid "$@" </dev/null >>"$dir/log/$name.out" 2>&1 &
  echo "$name $!" >>"$dir/pids"
}
start munged munged --foreground --force --key-file="$dir/munge/munge.key" \
  --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
  --seed-file="$dir/munge/munged.seed"
export SLURM_CONF="$dir/slurm.conf"
wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "error: $what (logs in $dir/log)" >&2; false; }
    sleep 0.2
  done
}
wait_for 20 "munged did not start" test -S "$dir/munge/munge.socket"
start slurmctld slurmctld -D -f "$SLURM_CONF"
wait_for 30 "slurmctld did not answer" scontrol ping
start slurmd slurmd -D -f "$SLURM_CONF" -N "$host"
node_idle() { [ "$(sinfo -h -n "$host" -o %t)" = idle ]; }
wait_for 60 "node $host did not become idle" node_idle
trap - ERR

cat <<EOF
SLURM cluster up in $dir: partition nitro, node $host ($node); daemons: $(cut -d' ' -f2 "$dir/pids" | xargs)
  for sbatch, squeue and nitro sweeps:  export SLURM_CONF=$SLURM_CONF
  for the slurm tests (make test):      export NITRO_SLURM_DIR=$dir
  to stop it:                           $here/slurm-down.sh $dir
EOF
