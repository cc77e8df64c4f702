#!/usr/bin/env bash
# the eighth H100 run (v2 attention with fused backward score loops; every kernel's WGSL cached):
# adapter features, checks, PyTorch (attention and training) and the peer in the same call as ours
O=${OUT:-/tmp/out}; mkdir -p $O/peer
T0=$(date +%s); el() { echo "$1 $(( $(date +%s)-T0 ))s"; }
bash .gpu/run.sh gpu-info.mjs > $O/info.txt 2>&1; el info
bash .gpu/run.sh gpu-check.mjs --scale 8 > $O/check.txt 2>&1; el check; tail -1 $O/check.txt; grep -c "| pass |" $O/check.txt
python3 scripts/bench/attention_torch.py --gpt2 8x512,8x1024 --vocab 50257,256 --matmul none > $O/torch.jsonl 2> $O/torch.err; el torch
for T in 512 1024; do bash .gpu/run.sh peer-gpu.mjs webgpu 8 "{\"nLayer\":12,\"nHead\":12,\"nEmbed\":768,\"blockSize\":$T}" 8 .gpu/peer.txt > $O/peer/peer-8x$T.jsonl 2> $O/peer/peer-8x$T.err; done; el peer
bash .gpu/run.sh gpu.mjs --torch $O/torch.jsonl --peer-dir $O/peer --matmul none --calibrate none --no-attention --no-linear --steps 10 > $O/gpu-train.txt 2>&1; el train
grep -E "^\|" $O/gpu-train.txt | tail -4
bash .gpu/run.sh gpu.mjs --torch $O/torch.jsonl --gpt2 none --matmul none --calibrate none --no-linear > $O/gpu-attention.txt 2>&1; el attention
grep -E "^\|" $O/gpu-attention.txt | tail -5
bash .gpu/run.sh gpu-attn.mjs --T 512,1024,2048,4096 --impl v1,v2 --budget 1 > $O/attn.txt 2>&1; el attn; grep -E "^T=" $O/attn.txt | cut -c1-240
tar -C $O -czf $O/peer.tgz peer && rm -rf $O/peer $O/torch.err
