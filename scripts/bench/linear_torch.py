"""PyTorch reference timings for scripts/bench/gpu-linear.ts: naive chunked GLA in fp32, the same
algorithm as @tsformer/ops glaChunk's composite (chunks of 64, sub-chunks of 8, exact per-channel
decay inside a sub-chunk), forward and forward+backward, on CUDA when available. One JSON line per
shape: {"kind": "gla", "T", "B", "H", "D", "fwd_ms", "fwdbwd_ms", "device"} (or "error").

    python3 scripts/bench/linear_torch.py --T 1024,4096 --B 4 --H 8 --D 64 [--check]

--check first compares the chunked form with the token-by-token recurrence (stderr).
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F


def gla_recurrent(q, k, v, g, scale):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t); [B, T, H, *]."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros(B, H, K, V)
    out = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None] + k[:, t][..., None] * v[:, t][..., None, :]  # [B, H, K, V]
        out.append(torch.einsum('bhk,bhkv->bhv', q[:, t] * scale, S))
    return torch.stack(out, 1)  # [B, T, H, V]


def gla_chunk(q, k, v, g, scale, C=64, c=8):
    """Chunked GLA; q, k, g [B, T, H, K], v [B, T, H, V] -> o [B, T, H, V]."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    nC = -(-T // C)
    Tp = nC * C
    nS = C // c

    def chunks(x):  # [B, T, H, X] -> [B, H, nC, C, X], zero padded at the end
        x = F.pad(x, (0, 0, 0, 0, 0, Tp - T))
        return x.transpose(1, 2).reshape(B, H, nC, C, x.shape[-1])

    qc, kc, vc, gc = chunks(q * scale), chunks(k), chunks(v), chunks(g)
    b = gc.cumsum(3)  # cumulative gate from the chunk start: [B, H, nC, C, K]
    bL = b[:, :, :, -1:]  # [B, H, nC, 1, K]
    # the state entering each chunk
    U = (kc * (bL - b).exp()).transpose(-1, -2) @ vc  # [B, H, nC, K, V]
    S = q.new_zeros(B, H, K, V)
    states = []
    for n in range(nC):
        states.append(S)
        S = S * bL[:, :, n, 0, :, None].exp() + U[:, :, n]
    o = (qc * b.exp()) @ torch.stack(states, 2)  # inter-chunk: [B, H, nC, C, V]
    # keys in earlier sub-chunks, both factors relative to r_I (the gate just before sub-chunk I)
    bs = b.reshape(B, H, nC, nS, c, K)
    r = bs[:, :, :, :, :1] - gc.reshape(B, H, nC, nS, c, K)[:, :, :, :, :1]  # [B, H, nC, nS, 1, K]
    qs = qc.reshape(B, H, nC, nS, c, K) * (bs - r).exp()  # exponent <= 0
    earlier = (torch.arange(C, device=q.device)[None, :] < (torch.arange(nS, device=q.device) * c)[:, None])  # [nS, C]
    m = earlier[None, None, None, :, :, None]
    kExp = torch.where(m, r - b[:, :, :, None], torch.zeros((), device=q.device))  # r_I - b_j <= 0 where kept
    ks = kc[:, :, :, None] * kExp.exp() * m  # [B, H, nC, nS, C, K]
    o = o + ((qs @ ks.transpose(-1, -2)).reshape(B, H, nC, C, C) @ vc)
    # keys in the query's own sub-chunk: exp(b_i - b_j) per channel
    tri = torch.tril(torch.ones(c, c, device=q.device, dtype=torch.bool))[:, :, None]  # [c, c, 1]
    d = torch.where(tri, bs[..., :, None, :] - bs[..., None, :, :], torch.zeros((), device=q.device))  # [.., c, c, K]
    A = (qc.reshape(B, H, nC, nS, c, 1, K) * kc.reshape(B, H, nC, nS, 1, c, K) * d.exp() * tri).sum(-1)  # [.., c, c]
    o = o + (A @ vc.reshape(B, H, nC, nS, c, V)).reshape(B, H, nC, C, V)
    return o.reshape(B, H, Tp, V)[:, :, :T].transpose(1, 2)  # [B, T, H, V]


def timed(fn, sync, reps_budget_s=2.0):
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - t0
    reps = max(1, min(20, int(reps_budget_s / max(one, 1e-6))))
    t1 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t1) / reps * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--T', default='1024,4096')
    ap.add_argument('--B', type=int, default=4)
    ap.add_argument('--H', type=int, default=8)
    ap.add_argument('--D', type=int, default=64)
    ap.add_argument('--budget', type=float, default=2.0)
    ap.add_argument('--check', action='store_true')
    a = ap.parse_args()
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
    if a.check:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 150, 3, 16, generator=gen, dtype=torch.float64) for _ in range(3))
        g = -5 * torch.rand(2, 150, 3, 16, generator=gen, dtype=torch.float64)
        err = (gla_chunk(q, k, v, g, 0.25) - gla_recurrent(q, k, v, g, 0.25)).norm() / gla_recurrent(q, k, v, g, 0.25).norm()
        print(f'check: chunked vs recurrent relative error {err.item():.2e}', file=sys.stderr)
    B, H, D = a.B, a.H, a.D
    for T in [int(t) for t in a.T.split(',')]:
        row = {'kind': 'gla', 'T': T, 'B': B, 'H': H, 'D': D, 'device': dev}
        try:
            q, k, v = (torch.randn(B, T, H, D, device=dev) for _ in range(3))
            g = F.logsigmoid(torch.randn(B, T, H, D, device=dev)) / 16
            dO = torch.randn(B, T, H, D, device=dev)
            with torch.no_grad():
                row['fwd_ms'] = timed(lambda: gla_chunk(q, k, v, g, D ** -0.5), sync, a.budget)
            xs = [x.clone().requires_grad_() for x in (q, k, v, g)]

            def fwdbwd():
                o = gla_chunk(*xs, D ** -0.5)
                torch.autograd.grad(o, xs, dO)

            row['fwdbwd_ms'] = timed(fwdbwd, sync, a.budget)
            del q, k, v, g, dO, xs
        except Exception as e:  # noqa: BLE001 (report, go on with the next size)
            row['error'] = str(e)[:200]
        if dev == 'cuda':
            torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)


if __name__ == '__main__':
    main()
