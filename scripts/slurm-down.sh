#!/usr/bin/env bash
# Stops the cluster that scripts/slurm-up.sh started in DIR: cancels its jobs, stops exactly the daemons whose
# PIDs it recorded (each checked by name first: a PID may have been reused), checks that no process is left
# that uses DIR, and removes DIR. Exits 1 naming any process that would not go away.
#   usage: scripts/slurm-down.sh DIR
set -uo pipefail
dir="${1:?usage: scripts/slurm-down.sh DIR}"
[ -d "$dir" ] || { echo "no cluster in $dir: nothing to stop"; exit 0; }
dir="$(cd "$dir" && pwd)"
export SLURM_CONF="$dir/slurm.conf"

pid_of() { awk -v n="$1" '$1 == n {print $2}' "$dir/pids" 2>/dev/null; }
alive() { [ -n "$2" ] && [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ]; }
stop() {  # stop NAME: SIGTERM, up to 15 s to exit, then SIGKILL
  local pid i
  pid="$(pid_of "$1")"
  alive "$1" "$pid" || return 0
  kill -TERM "$pid"
  for ((i = 0; i < 75; i++)); do alive "$1" "$pid" || return 0; sleep 0.2; done
  echo "warning: $1 ($pid) ignored SIGTERM for 15 s; killing it" >&2
  kill -KILL "$pid"
  sleep 0.5
}

# Jobs first: their step daemons (slurmstepd) outlive slurmd by design.
if alive slurmctld "$(pid_of slurmctld)" && [ -n "$(squeue -h -o %A 2>/dev/null)" ]; then
  squeue -h -o %A | xargs scancel
  for ((i = 0; i < 150; i++)); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
fi
stop slurmd
stop slurmctld
stop munged

# Whatever still holds a file under DIR (a daemon, a step daemon, a job) is ours and was not stopped.
left=()
for pid in $(find /proc/[0-9]*/cwd /proc/[0-9]*/fd -maxdepth 1 \( -lname "$dir" -o -lname "$dir/*" \) \
    2>/dev/null | cut -d/ -f3 | sort -un); do
  left+=("$pid ($(cat "/proc/$pid/comm" 2>/dev/null))")
done
if [ "${#left[@]}" -gt 0 ]; then
  echo "error: processes of the cluster in $dir are still running: ${left[*]}; $dir is kept" >&2
  exit 1
fi
rm -rf "$dir"
echo "SLURM cluster in $dir stopped; no process of it is left"
