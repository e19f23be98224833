#!/usr/bin/env bash
# Issue 7: FSDP across 2 cards vs 1 card, 3B LoRA SFT, seq 3072, remat none. Each row its own process.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TF_CPP_MIN_LOG_LEVEL=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpus.txt
B="python3 -m omnirrm_jax.cli bench sft --seq 3072 --remat none --no-hf --steps 10 --warmup 3"
row() { local name=$1; shift; echo "=== $name $(date +%T)"; timeout 150 "$@" --json $OUT/$name.json 2>&1 | grep -v "^W0\|^I0" | tail -12; }
row one_b1 $B --devices 1
row fsdp_b1 $B --mesh fsdp=2
row fsdp_b1_lhs env XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_triton_gemm=false" $B --mesh fsdp=2
row fsdp_b1_simple env NCCL_PROTO=Simple XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true" $B --mesh fsdp=2
row one_b2 $B --devices 1 --batch 2
row fsdp_b2_lhs env XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true" $B --mesh fsdp=2 --batch 2
echo "=== profile $(date +%T)"
timeout 150 env XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true" $B --mesh fsdp=2 --steps 3 --profile /tmp/prof 2>&1 | grep -v "^W0\|^I0" | tail -40
echo "=== done $(date +%T)"
