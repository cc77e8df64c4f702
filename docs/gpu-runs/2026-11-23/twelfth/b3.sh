#!/usr/bin/env bash
# twelfth run, call 3: call 2's best (4 x 2 tiles in a 64-thread forward, 2 x 4 tiles in 128-thread
# dQ and dK/dV, loops written out 16 times) with dot-product scores, 32 copies (the walked-row loops
# of dQ and dK/dV written out in full), 4 x 4 tiles in the forward, a 128-thread forward
cd "$(dirname "$0")/../../../.."
O=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
B=v2-r4f-c2f-wb-c4b
bash .gpu/run.sh gpu-attn.mjs --T 1024,4096,16384 --impl v2,$B-u16,$B-u16-dot,$B-u32,$B-u32-dot,v2-r4f-c4f-wb-c4b-u16,v2-r4f-c2f-w-c4b-u16-dot,$B-u16 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-260
timeout 200 bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt; grep -i "fail" $O/check.txt | head
