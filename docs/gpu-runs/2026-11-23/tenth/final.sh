#!/usr/bin/env bash
# the tenth H100 run (16 x 16 attention blocks, dK/dV without prefetch): checks, per-kernel attention,
# then the whole table in one command (PyTorch and the peer run by gpu.ts itself)
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt
bash .gpu/run.sh gpu-attn.mjs --T 1024,4096 --impl v2,v2-pf,v2-sep,v2-r4 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-240
bash .gpu/run.sh gpu.mjs --matmul none --steps 10 > $O/gpu-one-command.txt 2>&1; el gpu
grep -E "^reference|^\|" $O/gpu-one-command.txt | cut -c1-230
