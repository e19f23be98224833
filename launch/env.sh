# shellcheck shell=bash
# The one place that sets XLA / NCCL / libtpu flags for omnirrm runs; every launch script sources it:
#     source launch/env.sh && omnirrm_env gpu|tpu
# Flags the user already exported win: ours go first in XLA_FLAGS / LIBTPU_INIT_ARGS, later ones override.
#
# GPU
#   NCCL_NVLS_ENABLE=0          no NVLink multicast (NVLS/NVLink SHARP): it reserves extra GPU memory per
#                               communicator and is unavailable or flaky on shared / partitioned hosts.
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.92   let JAX's allocator take 92% of each card up front (less fragmentation
#                               than on-demand growth; the rest is left to NCCL and cuDNN workspaces).
#   --xla_gpu_enable_latency_hiding_scheduler=true   overlap FSDP all-gathers / reduce-scatters with compute.
#   (Triton GEMMs stay on: turning them off made the 3B LoRA step slower on one H100 and under FSDP on two,
#   docs/PERFORMANCE.md.)
# TPU
#   async collective fusion and compute/collective overlap (the FSDP settings large JAX TPU trainers use).
# Both
#   TF_CPP_MIN_LOG_LEVEL=1      keep XLA's info logs out of the training log.

omnirrm_env() {
  local platform="${1:-gpu}"
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
  case "$platform" in
    gpu)
      export NCCL_NVLS_ENABLE=0
      export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
      export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true${XLA_FLAGS:+ $XLA_FLAGS}"
      ;;
    tpu)
      export LIBTPU_INIT_ARGS="--xla_tpu_enable_async_collective_fusion=true --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true --xla_tpu_enable_async_collective_fusion_multiple_steps=true --xla_tpu_overlap_compute_collective_tc=true --xla_enable_async_all_gather=true${LIBTPU_INIT_ARGS:+ $LIBTPU_INIT_ARGS}"
      ;;
    *)
      echo "launch/env.sh: platform must be gpu or tpu, got '$platform'" >&2
      return 2
      ;;
  esac
}

# The settings as `export` lines (what the scripts print, and what a remote shell is given).
omnirrm_env_exports() {
  omnirrm_env_exports_only TF_CPP_MIN_LOG_LEVEL NCCL_NVLS_ENABLE XLA_PYTHON_CLIENT_MEM_FRACTION XLA_FLAGS \
    LIBTPU_INIT_ARGS
}

# Only the NAMED settings (a TPU worker gets no GPU variables from the launching machine's environment).
omnirrm_env_exports_only() {
  local name
  for name in "$@"; do
    if [[ -n "${!name:-}" ]]; then
      printf 'export %s=%q\n' "$name" "${!name}"
    fi
  done
}

# Print a command (shell-quoted) and run it, unless DRY_RUN=1.
omnirrm_run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    "$@"
  fi
}
