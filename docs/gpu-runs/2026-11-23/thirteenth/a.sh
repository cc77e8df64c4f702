#!/usr/bin/env bash
# thirteenth run, the one call of this session (5 minutes of device time were left): dK/dV with P and
# dS taking turns in one workgroup tile, at the default 2 x 4 tiles and at 4 x 2 tiles in 128 threads
# (which needs the single tile to fit 48 KiB), against the defaults, at T = 4096 and 16384; PyTorch
# SDPA fp32 at the same shapes in the same call; then the kernel checks at 8x the CI sizes, which run
# both new shapes as variants
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu-attn.mjs --T 4096,16384 --impl v2,v2-one-r4kv-c2kv,v2-one,v2 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-260
timeout 60 python3 scripts/bench/attention_torch.py --T 4096,16384 --gpt2 none --matmul none > $O/torch.txt 2>&1; el torch; grep -i sdpa $O/torch.txt | cut -c1-300
timeout 200 bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt; grep -i "fail" $O/check.txt | head
