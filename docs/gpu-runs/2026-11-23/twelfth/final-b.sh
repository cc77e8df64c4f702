#!/usr/bin/env bash
# twelfth run, final call B: the whole table in one command (PyTorch and the peer run first, by gpu.ts)
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu.mjs --matmul none --steps 10 > $O/gpu-one-command.txt 2>&1; el gpu
grep -E "^reference|^\|" $O/gpu-one-command.txt | cut -c1-230
