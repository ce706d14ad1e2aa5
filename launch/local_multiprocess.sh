#!/usr/bin/env bash
# Run `python -m flan_jax.train` as N cooperating processes on this machine (CPU),
# joined by jax.distributed over localhost. A rehearsal of a multi-host run: every
# process reads its own data shard and they train one model together.
#
#   launch/local_multiprocess.sh [options] [--] [flan_jax.train args...]
#
# Options (each also settable by the environment variable in brackets):
#   -n, --num-processes N        processes to start                 [NUM_PROCESSES, 2]
#   -d, --devices-per-process K  fake CPU devices in each process   [DEVICES_PER_PROCESS, 1]
#   -p, --port PORT              coordinator port on localhost      [PORT, 12355]
#   -l, --log-dir DIR            one log per process goes here      [LOG_DIR, /tmp/flan_jax_mp_logs]
#   -h, --help
# Everything else is passed to every process unchanged, e.g.
#   launch/local_multiprocess.sh -n 2 -d 2 --gin_file=gin/quickstart.gin \
#       --gin.TRAIN_STEPS=20 --gin.MODEL_DIR=/tmp/mp_run
#
# Exits 0 only if every process exits 0. If one fails, the others are stopped (they
# would otherwise wait on it at the next collective). The interpreter is $PYTHON.
set -u -o pipefail

num_processes="${NUM_PROCESSES:-2}"
devices_per_process="${DEVICES_PER_PROCESS:-1}"
port="${PORT:-12355}"
log_dir="${LOG_DIR:-/tmp/flan_jax_mp_logs}"
python="${PYTHON:-python}"

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

train_args=()
while (($#)); do
  case "$1" in
    -n|--num-processes) num_processes="$2"; shift 2 ;;
    --num-processes=*) num_processes="${1#*=}"; shift ;;
    -d|--devices-per-process) devices_per_process="$2"; shift 2 ;;
    --devices-per-process=*) devices_per_process="${1#*=}"; shift ;;
    -p|--port) port="$2"; shift 2 ;;
    --port=*) port="${1#*=}"; shift ;;
    -l|--log-dir) log_dir="$2"; shift 2 ;;
    --log-dir=*) log_dir="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args+=("$@"); break ;;
    *) train_args+=("$1"); shift ;;
  esac
done

for value in "$num_processes" "$devices_per_process" "$port"; do
  if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: expected a positive integer, got '$value' (see --help)" >&2
    exit 2
  fi
done

# Run from the repository root so relative paths such as gin/quickstart.gin resolve.
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$log_dir" || exit 2

# jax.distributed on CPU: cross-process collectives go through gloo (jax's default
# on CPU; set explicitly so an inherited setting cannot turn them off).
export JAX_PLATFORMS=cpu
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
if ((devices_per_process > 1)); then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices_per_process}"
fi

pids=()
# Once jax.distributed is up, a process catches SIGTERM (jax treats it as a preemption
# notice and keeps going), so escalate to SIGKILL for whatever is still alive.
stop_all() {
  local pid alive=()
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null && alive+=("$pid"); done
  ((${#alive[@]})) || return 0
  sleep 5
  for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null; done
}
trap 'echo "interrupted: stopping processes ${pids[*]}" >&2; stop_all; exit 130' INT TERM

echo "Starting $num_processes processes x $devices_per_process CPU device(s), coordinator" \
     "localhost:$port, logs in $log_dir/"
for ((i = 0; i < num_processes; i++)); do
  "$python" -m flan_jax.train \
      --coordinator_address="localhost:$port" \
      --num_processes="$num_processes" \
      --process_id="$i" \
      "${train_args[@]}" >"$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
  echo "  process $i: pid ${pids[i]}, log $log_dir/process_$i.log"
done

# Wait for all; on the first failure stop the rest rather than leave them hanging.
declare -A status=()
failed=0
while ((${#status[@]} < num_processes)); do
  for i in "${!pids[@]}"; do
    [[ -n "${status[$i]:-}" ]] && continue
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      wait "${pids[i]}"
      status[$i]=$?
      if ((status[$i] != 0)) && ((!failed)); then
        failed=1
        echo "process $i exited with status ${status[$i]}; stopping the others" >&2
        stop_all
      fi
    fi
  done
  ((${#status[@]} < num_processes)) && sleep 1
done
trap - INT TERM

for ((i = 0; i < num_processes; i++)); do
  echo "=== process $i (exit ${status[$i]}): last lines of $log_dir/process_$i.log"
  tail -n 5 "$log_dir/process_$i.log" | tr '\r' '\n' | tail -n 5
done
exit "$failed"
