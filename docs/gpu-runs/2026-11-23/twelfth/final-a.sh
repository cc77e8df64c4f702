#!/usr/bin/env bash
# twelfth run, final call A (new defaults: 4 x 2 tiles in a 64-thread forward, 2 x 4 tiles in
# 128-thread dQ and dK/dV, loops written out 16 times): kernel checks at 8x the CI sizes, then the
# defaults against the eleventh run's (16 x 16 blocks, 128-thread forward, 8 copies) at every T
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
timeout 200 bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt; grep -i "fail" $O/check.txt | head
bash .gpu/run.sh gpu-attn.mjs --T 1024,2048,4096,8192,16384 --impl v2,v2-r2f-c2-wf-u8,v2 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-260
