#!/usr/bin/env bash
# One GPU host, one process driving all its GPUs (JAX sees every local card; the config's mesh spreads over them).
#
#   launch/gpu_single_host.sh [--dry-run] [--gpus 0,1,...] sft|grpo CONFIG [key.sub=value ...]
#
# Prints what it will do, then runs `omnirrm sft|grpo CONFIG ...` with the flags of launch/env.sh.
# OMNIRRM (default: omnirrm) names the entry point, e.g. ".venv/bin/omnirrm".
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
gpus=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --gpus) [[ $# -ge 2 ]] || usage; gpus="$2"; shift 2 ;;
    -h|--help) usage ;;
    --*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || usage
cmd="$1"; config="$2"; shift 2
[[ "$cmd" == sft || "$cmd" == grpo ]] || { echo "command must be sft or grpo, got '$cmd'" >&2; usage; }
[[ -f "$config" || "$DRY_RUN" == 1 ]] || { echo "config $config does not exist" >&2; exit 2; }
export DRY_RUN

omnirrm_env gpu
if [[ -n "$gpus" ]]; then
  export CUDA_VISIBLE_DEVICES="$gpus"
fi
n_gpus="${gpus:+$(tr ',' '\n' <<<"$gpus" | wc -l)}"
echo "plan: one process on $(hostname) using ${n_gpus:-all local} GPU(s); omnirrm $cmd $config $*"
echo "environment:"
omnirrm_env_exports | sed 's/^/  /'
[[ -n "$gpus" ]] && echo "  export CUDA_VISIBLE_DEVICES=$gpus"
omnirrm_run "${OMNIRRM:-omnirrm}" "$cmd" "$config" "$@"
