#!/usr/bin/env bash
# eleventh run, call 3: inner loops written out 2, 4 and 8 times per trip, on the default and on
# vec4 scores + 128-thread forward (call 1's winners); double buffering (call 2) lost
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu-attn.mjs --T 1024,4096,16384 --impl v2,v2-u4,v2-vec-wf,v2-vec-wf-u2,v2-vec-wf-u4,v2-vec-wf-u8,v2 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-260
timeout 200 bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt; grep -i "fail" $O/check.txt | head
