#!/usr/bin/env bash
# twelfth run, call 6 (after the final calls; exploration for the next step, defaults unchanged):
# the new defaults without prefetch, with separate S and dP loops, and dQ with 4 x 2 tiles at 128
# threads (64 queries x 16 keys, 47 KiB of workgroup memory)
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu-attn.mjs --T 4096,16384 --impl v2,v2-np,v2-sep,v2-r4q-c2q,v2 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-260
