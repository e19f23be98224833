#!/usr/bin/env bash
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TF_CPP_MIN_LOG_LEVEL=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpus.txt
B="python3 -m omnirrm_jax.cli bench sft --seq 3072 --remat none --no-hf --steps 10 --warmup 3"
row() { local name=$1; shift; echo "=== $name $(date +%T)"; timeout 170 "$@" --json $OUT/$name.json 2>&1 | grep -v "^W0\|^I0" | grep -v '^{"bench"' | tail -12; }
row one_b2 $B --devices 1 --batch 2
row fsdp_b2 $B --mesh fsdp=2 --batch 2
echo "=== profile $(date +%T)"
timeout 170 $B --mesh fsdp=2 --steps 3 --profile /tmp/prof 2>&1 | grep -v "^W0\|^I0" | grep -v '^{"bench"' | tail -45
echo "=== done $(date +%T)"
