#!/usr/bin/env bash
# eleventh run, call 2: double-buffered tiles (one barrier fewer per block), with vec4 scores and
# 128-thread forward workgroups (the two winners of call 1), against the default
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu-attn.mjs --T 1024,4096,16384 --impl v2,v2-db,v2-pf-db,v2-vec-wf,v2-vec-wf-db,v2-vec-wf-pf-db,v2 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-260
timeout 200 bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt; grep -i "fail" $O/check.txt | head
