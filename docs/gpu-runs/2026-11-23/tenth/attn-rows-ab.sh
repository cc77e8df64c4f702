#!/usr/bin/env bash
# (at that commit 32 x 32 blocks were the default and `-r2` asked for 16 x 16; since then 16 x 16 is the default and `-r4` asks for 32 x 32)
cd "$(dirname "$0")/.."
bash .gpu/run.sh gpu-attn.mjs --T 512,1024,2048,4096 --impl v2,v2-r2,v2,v2-r2 --budget 1 > $OUT/attn.txt 2>&1
grep "^T=" $OUT/attn.txt | cut -c1-300
timeout 200 bash .gpu/run.sh gpu-check.mjs --scale 8 > $OUT/check.txt 2>&1; tail -1 $OUT/check.txt; grep -c "| pass |" $OUT/check.txt; grep "16 x 16\|fail" $OUT/check.txt | head
