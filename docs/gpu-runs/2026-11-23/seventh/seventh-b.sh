#!/usr/bin/env bash
# the seventh H100 run (v2 attention by default, tiles pipelined): checks, the training table with
# PyTorch and the peer in the same call, the attention table against SDPA, per-kernel attention
O=${OUT:-/tmp/out}; mkdir -p $O/peer
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu.mjs --torch .gpu/torch7.jsonl --gpt2 none --matmul none --calibrate none --no-linear > $O/gpu-attention.txt 2>&1; el attention
grep -E "^\|" $O/gpu-attention.txt | head -9
bash .gpu/run.sh gpu-attn.mjs --T 512,1024,2048,4096 --impl v2,mixed --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-300
