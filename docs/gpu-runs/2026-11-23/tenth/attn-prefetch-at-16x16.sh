#!/usr/bin/env bash
cd "$(dirname "$0")/.."
bash .gpu/run.sh gpu-attn.mjs --T 512,1024,4096 --impl v2,v2-np,v2-arr,v2-r4,v2 --budget 1 > $OUT/attn.txt 2>&1
grep "^T=" $OUT/attn.txt | cut -c1-300
