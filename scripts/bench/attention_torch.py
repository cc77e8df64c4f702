"""PyTorch reference timings for the GPU benchmark (scripts/bench/gpu.ts), fp32 with TF32 off.

Causal attention at B, H, D fixed and each T: a naive form (matmul, mask, softmax, matmul) and
scaled_dot_product_attention, forward and forward+backward, with peak memory. Then a GPT-2-small-shaped
model (the same shape as gpu.ts trains: pre-LayerNorm, RoPE, GELU MLP 4d, tied embeddings) trained
with AdamW in eager mode. Prints one JSON object per line.

  python3 scripts/bench/attention_torch.py --T 1024,2048 --B 8 --H 12 --D 64 --gpt2 8x1024
"""
import argparse, json, math, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = "cuda"


def timed(fn, budget_s=2.0):
    fn(); torch.cuda.synchronize()  # warm-up
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); one = time.perf_counter() - t0
    reps = max(1, min(20, int(budget_s / max(one, 1e-6))))
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / reps, torch.cuda.max_memory_allocated() / 2**30


def naive(q, k, v):
    T = q.shape[2]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, device=dev, dtype=torch.bool).tril()
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def attention(B, H, D, Ts):
    for T in Ts:
        for name, f in (("naive", naive), ("sdpa", sdpa)):
            row = {"kind": "attention", "impl": name, "B": B, "H": H, "T": T, "D": D}
            try:
                q, k, v = (torch.randn(B, H, T, D, device=dev, requires_grad=True) for _ in range(3))
                with torch.no_grad():
                    row["fwd_ms"], row["fwd_gib"] = timed(lambda: f(q, k, v))
                def fb():
                    f(q, k, v).sum().backward()
                    q.grad = k.grad = v.grad = None
                row["fwdbwd_ms"], row["fwdbwd_gib"] = timed(fb)
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
            del q, k, v
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)


class Rope(nn.Module):
    def __init__(self, D, T, theta=10000.0):
        super().__init__()
        inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
        self.register_buffer("cos", ang.cos().float()[None, :, None, :])
        self.register_buffer("sin", ang.sin().float()[None, :, None, :])

    def forward(self, x):  # [B, T, H, D], half layout
        a, b = x.chunk(2, -1)
        return torch.cat([a * self.cos - b * self.sin, b * self.cos + a * self.sin], -1)


class Block(nn.Module):
    def __init__(self, d, h, T):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
        self.rope = Rope(d // h, T)

    def forward(self, x):
        B, T, d = x.shape
        y = self.ln1(x)
        q, k, v = (p(y).view(B, T, self.h, d // self.h) for p in (self.q, self.k, self.v))
        q, k = self.rope(q), self.rope(k)
        a = naive(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2).reshape(B, T, d)
        x = x + self.o(a)
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, V, d, L, h, T):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.blocks = nn.ModuleList(Block(d, h, T) for _ in range(L))
        self.ln = nn.LayerNorm(d)

    def forward(self, ids, targets):
        x = self.emb(ids)
        for b in self.blocks: x = b(x)
        logits = self.ln(x) @ self.emb.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def matmul(sizes):
    """Square fp32 products (TF32 off): ms and TFLOP/s per size."""
    for n in sizes:
        a = torch.randn(n, n, device=dev); b = torch.randn(n, n, device=dev)
        ms, _ = timed(lambda: a @ b, budget_s=1.0)
        print(json.dumps({"kind": "matmul", "n": n, "ms": ms, "tflops": 2 * n**3 / (ms * 1e9)}), flush=True)
        del a, b


def gpt2(B, T, V=50257, steps=5):
    torch.manual_seed(0)
    m = GPT(V, 768, 12, 12, T).to(dev)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, V, (B, T), device=dev)
    tg = torch.randint(0, V, (B, T), device=dev)
    def step():
        loss = m(ids, tg); opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); return loss.item()
    step(); step(); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps): step()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / steps * 1000
    print(json.dumps({"kind": "gpt2", "impl": "torch eager fp32", "B": B, "T": T, "V": V, "ms_per_step": ms,
                      "tokens_per_s": B * T / ms * 1000, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", default="1024,2048,4096,8192,16384")
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=12)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--gpt2", default="8x512,8x1024", help="BxT[,BxT] of the GPT-2-small runs, or 'none'")
    ap.add_argument("--vocab", default="50257,256", help="vocabulary sizes of the GPT-2-small runs (256: the peer's bytes)")
    ap.add_argument("--matmul", default="1024,2048,4096", help="sizes of the square fp32 matmuls, or 'none'")
    a = ap.parse_args()
    print(json.dumps({"kind": "info", "torch": torch.__version__, "device": torch.cuda.get_device_name()}), flush=True)
    if a.matmul != "none":
        matmul([int(n) for n in a.matmul.split(",")])
    if a.T != "none":
        attention(a.B, a.H, a.D, [int(t) for t in a.T.split(",")])
    if a.gpt2 != "none":
        for bt in a.gpt2.split(","):
            B, T = (int(x) for x in bt.split("x"))
            for V in (int(v) for v in a.vocab.split(",")):
                gpt2(B, T, V)
                torch.cuda.empty_cache()
