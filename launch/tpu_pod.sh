#!/usr/bin/env bash
# A Cloud TPU VM slice (v5e-16, v4-32, ...): create it or reuse it, copy and install this project on every
# worker, and run `omnirrm sft|grpo CONFIG` on all workers at once (--worker=all). Every worker is one JAX
# process; jax.distributed is initialised from the TPU metadata (OMNIRRM_DISTRIBUTED=auto).
#
#   launch/tpu_pod.sh --name NAME --zone ZONE [--type v5litepod-16] [--version v2-alpha-tpuv5-lite]
#                     [--project PROJECT] [--spot] [--no-install] [--dry-run] sft|grpo CONFIG [key.sub=value ...]
#
# The config, the data shards and run.workdir must be readable by every worker under the same path (GCS via
# gcsfuse, or a filestore mount); CONFIG is copied with the project, so a path inside the repo works too.
# Steps: 1 describe NAME (create it if missing), 2 tar the committed tree (git HEAD) and scp it to all workers, 3 pip install
# it with jax[tpu] into ~/omnirrm/.venv, 4 run omnirrm with the flags of launch/env.sh on all workers.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

usage() {
  grep '^#' "${BASH_SOURCE[0]}" | sed '1d' | grep -v shellcheck | sed 's/^# \{0,1\}//' >&2
  exit 2
}

DRY_RUN=0
name=""
zone=""
type="v5litepod-16"
version="v2-alpha-tpuv5-lite"
project=""
spot=0
install=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --name) [[ $# -ge 2 ]] || usage; name="$2"; shift 2 ;;
    --zone) [[ $# -ge 2 ]] || usage; zone="$2"; shift 2 ;;
    --type) [[ $# -ge 2 ]] || usage; type="$2"; shift 2 ;;
    --version) [[ $# -ge 2 ]] || usage; version="$2"; shift 2 ;;
    --project) [[ $# -ge 2 ]] || usage; project="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --no-install) install=0; shift ;;
    -h|--help) usage ;;
    --*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ -n "$name" && -n "$zone" ]] || { echo "--name and --zone are required" >&2; usage; }
[[ $# -ge 2 ]] || usage
cmd="$1"; config="$2"; shift 2
[[ "$cmd" == sft || "$cmd" == grpo ]] || { echo "command must be sft or grpo, got '$cmd'" >&2; usage; }
export DRY_RUN

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

# The remote command: the env.sh flags, the multi-controller switch, then omnirrm; all quoted once, here.
omnirrm_env tpu
remote_env="$(omnirrm_env_exports_only TF_CPP_MIN_LOG_LEVEL LIBTPU_INIT_ARGS | tr '\n' ';')"
printf -v run_args ' %q' "$cmd" "$config" "$@"
remote_run="cd ~/omnirrm && ${remote_env} export OMNIRRM_DISTRIBUTED=auto; .venv/bin/omnirrm${run_args}"
remote_install="mkdir -p ~/omnirrm && tar -xzf ~/omnirrm.tar.gz -C ~/omnirrm && cd ~/omnirrm && \
python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . 'jax[tpu]'"

echo "plan: TPU slice $name ($type, $version) in $zone${project:+, project $project}; all workers run: omnirrm${run_args}"
echo "  1. reuse $name if it exists, else create it$([[ $spot == 1 ]] && echo ' (spot)')"
echo "  2. copy the project (committed tree, git HEAD, of $repo) to every worker$([[ $install == 0 ]] && echo ' - skipped (--no-install)')"
echo "  3. install it with jax[tpu] on every worker$([[ $install == 0 ]] && echo ' - skipped (--no-install)')"
echo "  4. run on --worker=all with:"
omnirrm_env_exports_only TF_CPP_MIN_LOG_LEVEL LIBTPU_INIT_ARGS | sed 's/^/       /'
echo "       export OMNIRRM_DISTRIBUTED=auto"

if [[ "$DRY_RUN" == 1 ]]; then
  echo "+ ${gcloud_tpu[*]} describe $name ${where[*]}  (dry run: assumed missing)"
  exists=0
elif "${gcloud_tpu[@]}" describe "$name" "${where[@]}" --format='value(state)' >/dev/null 2>&1; then
  exists=1
  echo "reusing $name"
else
  exists=0
fi
if [[ "$exists" == 0 ]]; then
  create=("${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$type" --version="$version")
  [[ "$spot" == 1 ]] && create+=(--spot)
  omnirrm_run "${create[@]}"
fi

if [[ "$install" == 1 ]]; then
  tarball="${TMPDIR:-/tmp}/omnirrm-$$.tar.gz"
  omnirrm_run git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
  omnirrm_run "${gcloud_tpu[@]}" scp "$tarball" "$name:~/omnirrm.tar.gz" "${where[@]}" --worker=all
  omnirrm_run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$remote_install"
  [[ "$DRY_RUN" == 1 ]] || rm -f "$tarball"
fi
omnirrm_run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$remote_run"
