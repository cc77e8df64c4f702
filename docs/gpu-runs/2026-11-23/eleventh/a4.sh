#!/usr/bin/env bash
# eleventh run, call 4: around call 3's best (vec4 scores, 128-thread forward, loops written out 8
# times): full unrolling, without the wide forward, wide everywhere, dK/dV prefetching
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu-attn.mjs --T 1024,4096,16384 --impl v2,v2-vec-wf-u8,v2-vec-wf-u16,v2-vec-u8,v2-vec-w-u8,v2-vec-wf-pf-u8,v2-vec-wf-u8 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-260
timeout 200 bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt; grep -i "fail" $O/check.txt | head
