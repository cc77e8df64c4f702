#!/usr/bin/env bash
# twelfth run, call 2: around call 1's winners (4 x 2 tiles in a 64-thread forward; 2 x 4 tiles in
# 128-thread dQ and dK/dV): the forward at 128 threads (64 x 16 blocks, which the per-kernel
# workgroup-memory bound now admits), full unrolling, dot-product scores, dK/dV prefetching
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu-attn.mjs --T 1024,4096,16384 --impl v2,v2-r4f-c2f-wb-c4b,v2-r4f-c2f-w-c4b,v2-r4f-c2f-wb-c4b-u16,v2-r4f-c2f-wb-c4b-dot,v2-r4f-c2f-wb-c4b-pf,v2 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-260
timeout 200 bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt; grep -i "fail" $O/check.txt | head
