#!/usr/bin/env bash
# eleventh run, final call A (new defaults: vec4 scores, 128-thread forward, loops written out 8
# times): kernel checks at 8x the CI sizes, then the defaults against the tenth run's choices
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
timeout 200 bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt; grep -i "fail" $O/check.txt | head
bash .gpu/run.sh gpu-attn.mjs --T 1024,2048,4096,8192,16384 --impl v2,v2-dot-w0-u1,v2 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-260
