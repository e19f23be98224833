#!/usr/bin/env bash
# Several GPU hosts joined by jax.distributed.
#
#   SLURM (inside or outside an allocation; srun starts one task per GPU - JAX's SLURM detection binds each
#   task to the GPU of its local rank - and JAX reads the layout from SLURM):
#     launch/gpu_multi_host.sh --slurm --nodes N [--gpus-per-node 8] [--dry-run] sft|grpo CONFIG [k=v ...]
#   Explicit (one process per host driving all its GPUs; run it on every host with its own --process-id):
#     launch/gpu_multi_host.sh --coordinator HOST:PORT --num-processes N --process-id I [--dry-run] sft|grpo CONFIG
#
# Data paths, the config and run.workdir must be visible to every host (shared filesystem or GCS):
# each process reads its share of the data and all of them write the Orbax checkpoint together.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

usage() {
  grep '^#' "${BASH_SOURCE[0]}" | sed '1d' | grep -v shellcheck | sed 's/^# \{0,1\}//' >&2
  exit 2
}

DRY_RUN=0
mode=""
nodes=""
gpus_per_node=8
coordinator=""
num_processes=""
process_id=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --slurm) mode=slurm; shift ;;
    --nodes) [[ $# -ge 2 ]] || usage; nodes="$2"; shift 2 ;;
    --gpus-per-node) [[ $# -ge 2 ]] || usage; gpus_per_node="$2"; shift 2 ;;
    --coordinator) [[ $# -ge 2 ]] || usage; mode=explicit; coordinator="$2"; shift 2 ;;
    --num-processes) [[ $# -ge 2 ]] || usage; num_processes="$2"; shift 2 ;;
    --process-id) [[ $# -ge 2 ]] || usage; process_id="$2"; shift 2 ;;
    -h|--help) usage ;;
    --*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || usage
cmd="$1"; config="$2"; shift 2
[[ "$cmd" == sft || "$cmd" == grpo ]] || { echo "command must be sft or grpo, got '$cmd'" >&2; usage; }
export DRY_RUN
omnirrm_env gpu
entry="${OMNIRRM:-omnirrm}"

case "$mode" in
  slurm)
    [[ -n "$nodes" ]] || { echo "--slurm needs --nodes N" >&2; usage; }
    echo "plan: SLURM, $nodes node(s) x $gpus_per_node GPU(s), one process per GPU; omnirrm $cmd $config $*"
    echo "environment (exported to every task):"
    omnirrm_env_exports | sed 's/^/  /'
    omnirrm_run srun --nodes="$nodes" --ntasks-per-node="$gpus_per_node" --gpus-per-node="$gpus_per_node" \
      --kill-on-bad-exit=1 --export=ALL "$entry" "$cmd" "$config" "$@"
    ;;
  explicit)
    [[ -n "$num_processes" && -n "$process_id" ]] || {
      echo "--coordinator needs --num-processes and --process-id" >&2; usage; }
    [[ "$coordinator" == *:* ]] || { echo "--coordinator must be host:port, got '$coordinator'" >&2; exit 2; }
    (( process_id >= 0 && process_id < num_processes )) || {
      echo "--process-id $process_id is not in [0, $num_processes)" >&2; exit 2; }
    export OMNIRRM_COORDINATOR="$coordinator" OMNIRRM_NUM_PROCESSES="$num_processes" OMNIRRM_PROCESS_ID="$process_id"
    echo "plan: process $process_id of $num_processes on $(hostname), coordinator $coordinator" \
      "(process 0's host); omnirrm $cmd $config $*"
    echo "environment:"
    { omnirrm_env_exports
      printf 'export OMNIRRM_COORDINATOR=%q OMNIRRM_NUM_PROCESSES=%q OMNIRRM_PROCESS_ID=%q\n' \
        "$coordinator" "$num_processes" "$process_id"; } | sed 's/^/  /'
    omnirrm_run "$entry" "$cmd" "$config" "$@"
    ;;
  *)
    echo "choose --slurm or --coordinator HOST:PORT" >&2
    usage
    ;;
esac
