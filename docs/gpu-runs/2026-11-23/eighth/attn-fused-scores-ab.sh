#!/usr/bin/env bash
# (at commit 01b00a2 the fused score loops were off by default and `-fs` turned them on; since cb60947 they are the default and `-sep` turns them off)
cd "$(dirname "$0")/.."
bash .gpu/run.sh gpu-attn.mjs --T 1024,2048,4096 --impl v2,v2-fs,v2,v2-fs --budget 1 --check 1024 > $OUT/attn.txt 2>&1
grep "^T=" $OUT/attn.txt | cut -c1-300
