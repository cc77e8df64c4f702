#!/usr/bin/env bash
# twelfth run, call 1: score micro-tiles R x C with C (walked rows per thread) apart from R:
# 2 x 4 (blocks walk 32 rows) in every kernel, with 128-thread workgroups, 4 x 2, 4 x 2 at 64 threads
# in the forward, 2 x 4 with dot-product scores (fewer registers); then every check at scale 8
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu-attn.mjs --T 1024,4096,16384 --impl v2,v2-c4,v2-c4-w,v2-r4-c2,v2-r4-c2-w0,v2-c4-dot,v2 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-260
timeout 200 bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt; grep -i "fail" $O/check.txt | head
